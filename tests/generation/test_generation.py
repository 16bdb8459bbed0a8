"""Chat records, the assistant-only label mask, generation and text metrics, on tiny random models.

The tokenizer is a byte-level BPE trained in a blink on a few sentences (printable ASCII and
newlines only, so every token decodes to clean text); the models are 2-layer, hidden-32 Llama
and GPT-2 decoders with a large initializer range, so greedy choices are decisive.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import tiny_bpe_tokenizer, tiny_llama

from lmforge.data.batching import IGNORE_INDEX
from lmforge.errors import LmforgeError
from lmforge.generation.chat import (
    DEFAULT_CHAT_TEMPLATE,
    encode_conversation,
    end_of_turn_token_id,
    ensure_chat_template,
    records_to_messages,
    render_chat,
)
from lmforge.generation.generate import (
    GenerationOptions,
    _GumbelSample,
    exact_match,
    generate,
    rouge_l,
)

pytestmark = pytest.mark.unit

CONVERSATION = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
    {"role": "user", "content": "And the dog?"},
    {"role": "assistant", "content": "the dog sat on the log."},
]
PROMPTS = ["the cat", "Paris is the capital of", "hello", "how are you?"]


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = tiny_bpe_tokenizer()
    ensure_chat_template(tokenizer)
    return tokenizer


def _gpt2(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=256,
            n_embd=32,
            n_layer=2,
            n_head=2,
            initializer_range=0.3,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
    )


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, chat_tokenizer):
    return (tiny_llama if request.param == "llama" else _gpt2)(chat_tokenizer)


@pytest.fixture(scope="module")
def llama(chat_tokenizer):
    return tiny_llama(chat_tokenizer)


def _greedy(**kwargs) -> GenerationOptions:
    return GenerationOptions(greedy=True, **{"max_new_tokens": 16, **kwargs})


# --- records -----------------------------------------------------------------------------------


def test_records_to_messages_reads_chat_and_alpaca_records():
    chat = {
        "messages": [
            {"role": "user", "content": "hi", "name": "ann"},
            {"role": "assistant", "content": "yo"},
        ],
        "id": 3,
    }
    assert records_to_messages(chat, "d.jsonl", 1) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    alpaca = {"instruction": "Translate.", "input": "chat", "output": "cat"}
    assert records_to_messages(alpaca, "d.jsonl", 2) == [
        {"role": "user", "content": "Translate.\n\nchat"},
        {"role": "assistant", "content": "cat"},
    ]
    for no_input in (
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Say hi.", "output": "hi"},
        {"instruction": "Say hi.", "input": None, "output": "hi"},
    ):
        assert records_to_messages(no_input, "d.jsonl", 3)[0] == {
            "role": "user",
            "content": "Say hi.",
        }


@pytest.mark.parametrize(
    "record, expected",
    [
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]},
            "role 'bot'",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 42}]},
            "must be a string",
        ),
        (
            {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]},
            "no assistant turn",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "hi"},
                ]
            },
            "opens with",
        ),
        ({"messages": []}, "non-empty list"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"instruction": "Say hi.", "input": ""}, "no assistant turn"),
        ({"instruction": "Say hi.", "output": ["hi"]}, "'output' must be a string"),
        ({"instruction": 1, "output": "hi"}, "'instruction' must be a string"),
        ({"prompt": "hi", "completion": "yo"}, "found keys 'prompt', 'completion'"),
        ({"messages": [], "instruction": "x", "output": "y"}, "both"),
        (["hi"], "JSON object"),
    ],
)
def test_records_to_messages_errors_name_the_file_and_line(record, expected):
    with pytest.raises(LmforgeError, match="data.jsonl line 7") as err:
        records_to_messages(record, "data.jsonl", 7)
    assert expected in str(err.value) and "\n" not in str(err.value)


# --- chat template -----------------------------------------------------------------------------


def test_default_chat_template_is_applied_only_when_missing():
    tokenizer = tiny_bpe_tokenizer()
    size = len(tokenizer)
    setup = ensure_chat_template(tokenizer)
    assert (
        setup and setup.tokens_added == 2 and len(tokenizer) == size + 2
    )  # caller resizes embeddings
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert tokenizer.convert_ids_to_tokens(
        tokenizer.encode("<|im_end|>", add_special_tokens=False)
    ) == ["<|im_end|>"]
    assert render_chat(CONVERSATION[:3], tokenizer) == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis is the capital.<|im_end|>\n"
    )
    assert render_chat(CONVERSATION[:2], tokenizer, add_generation_prompt=True).endswith(
        "Capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert end_of_turn_token_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>")

    again = ensure_chat_template(tokenizer)
    assert not again and again.tokens_added == 0 and len(tokenizer) == size + 2
    own = tiny_bpe_tokenizer()
    own.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert not ensure_chat_template(own) and own.chat_template.startswith("{% for m")


def test_a_tokenizer_without_template_is_an_error_when_encoding():
    with pytest.raises(LmforgeError, match="no chat template"):
        encode_conversation(CONVERSATION, tiny_bpe_tokenizer(), 64)


# --- label mask --------------------------------------------------------------------------------


def _labelled_pieces(tokenizer, encoded) -> list[str]:
    """The label-selected tokens decoded, one string per contiguous run."""
    selected = encoded.labels != IGNORE_INDEX
    np.testing.assert_array_equal(encoded.labels[selected], encoded.input_ids[selected])
    edges = np.flatnonzero(np.diff(np.concatenate([[0], selected.astype(int), [0]])))  # run bounds
    return [tokenizer.decode(encoded.input_ids[a:b]) for a, b in edges.reshape(-1, 2)]


def test_labels_cover_exactly_the_assistant_turns(chat_tokenizer):
    encoded = encode_conversation(CONVERSATION, chat_tokenizer, max_length=512)
    assert encoded.truncated_tokens == 0 and encoded.has_targets
    assert encoded.input_ids.dtype == np.int32 and encoded.labels.dtype == np.int32
    full = chat_tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    assert encoded.input_ids.tolist() == list(full)  # the ids of Hugging Face's own tokenization
    assert _labelled_pieces(chat_tokenizer, encoded) == [
        "Paris is the capital.<|im_end|>",
        "the dog sat on the log.<|im_end|>",
    ]


def test_label_mask_agrees_with_transformers_generation_blocks(chat_tokenizer):
    """The same ChatML with {% generation %} blocks: Hugging Face's mask must equal ours."""
    with_blocks = DEFAULT_CHAT_TEMPLATE.replace(
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}",
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
        "{{ '<|im_end|>\n' }}"
        "{% endif %}",
    )
    reference = chat_tokenizer.apply_chat_template(
        CONVERSATION,
        chat_template=with_blocks,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    encoded = encode_conversation(CONVERSATION, chat_tokenizer, max_length=512)
    assert encoded.input_ids.tolist() == reference["input_ids"]
    assert (encoded.labels != IGNORE_INDEX).astype(int).tolist() == reference["assistant_masks"]


def test_plain_text_template_ending_turns_with_eos():
    tokenizer = tiny_bpe_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}"
        "{{ 'Assistant: ' + m['content'] + eos_token + '\n' }}"
        "{% else %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )
    encoded = encode_conversation(CONVERSATION, tokenizer, max_length=512)
    # "Assistant:" is the prompt; a token straddling ": " and the answer is trained
    assert [p.strip() for p in _labelled_pieces(tokenizer, encoded)] == [
        "Paris is the capital.<eos>",
        "the dog sat on the log.<eos>",
    ]
    assert end_of_turn_token_id(tokenizer) == tokenizer.eos_token_id


def test_truncation_is_reported_and_a_row_without_targets_is_detectable(chat_tokenizer):
    full = encode_conversation(CONVERSATION, chat_tokenizer, max_length=512)
    cut = encode_conversation(CONVERSATION, chat_tokenizer, max_length=len(full.input_ids) - 3)
    assert cut.truncated_tokens == 3 and cut.has_targets
    np.testing.assert_array_equal(cut.input_ids, full.input_ids[:-3])  # cut from the right
    np.testing.assert_array_equal(cut.labels, full.labels[:-3])
    first_answer = int(np.argmax(full.labels != IGNORE_INDEX))
    none_left = encode_conversation(CONVERSATION, chat_tokenizer, max_length=first_answer)
    assert (
        not none_left.has_targets
        and none_left.truncated_tokens == len(full.input_ids) - first_answer
    )


def test_template_that_rewrites_history_is_refused():
    tokenizer = tiny_bpe_tokenizer()
    tokenizer.chat_template = (
        "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(LmforgeError, match="renders a turn differently"):
        encode_conversation(CONVERSATION, tokenizer, 64)


def test_template_errors_become_one_line_errors():
    tokenizer = tiny_bpe_tokenizer()
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(LmforgeError, match="rejected the conversation: roles must alternate"):
        encode_conversation(CONVERSATION, tokenizer, 64)


# --- generation --------------------------------------------------------------------------------


def test_greedy_is_deterministic_and_batched_equals_one_by_one(model, chat_tokenizer):
    one_by_one = generate(model, chat_tokenizer, PROMPTS, _greedy(), batch_size=1)
    batched = generate(
        model, chat_tokenizer, PROMPTS, _greedy(), batch_size=3
    )  # left-padded batches
    assert (
        batched == one_by_one == generate(model, chat_tokenizer, PROMPTS, _greedy(), batch_size=4)
    )
    assert all(text for text in one_by_one)
    penalized = _greedy(repetition_penalty=1.5)
    assert generate(model, chat_tokenizer, PROMPTS, penalized, batch_size=1) == generate(
        model, chat_tokenizer, PROMPTS, penalized, batch_size=4
    )


def test_the_callers_tokenizer_and_model_mode_are_left_alone(llama, chat_tokenizer):
    side, pad = chat_tokenizer.padding_side, chat_tokenizer.pad_token
    llama.train()
    generate(llama, chat_tokenizer, PROMPTS[:2], _greedy(max_new_tokens=2))
    assert (
        llama.training
        and chat_tokenizer.padding_side == side
        and chat_tokenizer.pad_token == pad is None
    )
    llama.eval()


def test_seeded_sampling_is_reproducible_whatever_the_batch(model, chat_tokenizer):
    options = GenerationOptions(max_new_tokens=16, seed=7)
    first = generate(model, chat_tokenizer, PROMPTS, options, batch_size=4)
    assert first == generate(
        model, chat_tokenizer, PROMPTS, options, batch_size=4
    )  # same call, same text
    assert first == generate(model, chat_tokenizer, PROMPTS, options, batch_size=1)  # per prompt
    assert first != generate(
        model, chat_tokenizer, PROMPTS, GenerationOptions(max_new_tokens=16, seed=8)
    )
    assert first[:2] == generate(model, chat_tokenizer, PROMPTS[:2], options)  # keyed by position


def test_sampling_with_top_k_1_is_greedy(llama, chat_tokenizer):
    greedy = generate(llama, chat_tokenizer, PROMPTS, _greedy())
    assert (
        generate(
            llama, chat_tokenizer, PROMPTS, GenerationOptions(max_new_tokens=16, top_k=1, seed=3)
        )
        == greedy
    )
    sharp = GenerationOptions(max_new_tokens=16, temperature=1e-4, top_p=0.9, seed=3)
    assert generate(llama, chat_tokenizer, PROMPTS, sharp) == greedy


def test_gumbel_max_draws_follow_the_softmax():
    probabilities = torch.tensor([0.1, 0.2, 0.3, 0.4])
    rows = 8000
    draw = _GumbelSample([(0, i) for i in range(rows)])
    scores = probabilities.log().expand(rows, 4).clone()  # (B, V)
    counts = torch.bincount(draw(None, scores).argmax(dim=1), minlength=4) / rows
    torch.testing.assert_close(counts, probabilities, atol=0.02, rtol=0)


def test_generation_stops_before_a_stop_string(llama, chat_tokenizer):
    text = generate(llama, chat_tokenizer, PROMPTS[:1], _greedy(max_new_tokens=24))[0]
    stop = text[8:11]
    assert len(stop) == 3, text
    expected = text[: text.find(stop)]
    assert (
        generate(llama, chat_tokenizer, PROMPTS[:1], _greedy(max_new_tokens=24, stop=[stop]))[0]
        == expected
    )
    both = generate(
        llama, chat_tokenizer, PROMPTS, _greedy(max_new_tokens=24, stop=["zzz", stop]), batch_size=4
    )
    assert both[0] == expected and all(stop not in t for t in both)


def test_max_new_tokens_is_respected(llama, chat_tokenizer, monkeypatch):
    outputs = []
    original = llama.generate

    def spy(*args, **kwargs):
        outputs.append((kwargs["input_ids"].shape[1], original(*args, **kwargs)))
        return outputs[-1][1]

    monkeypatch.setattr(llama, "generate", spy)
    short = generate(llama, chat_tokenizer, PROMPTS, _greedy(max_new_tokens=3), batch_size=4)
    longer = generate(llama, chat_tokenizer, PROMPTS, _greedy(max_new_tokens=12), batch_size=4)
    (width, out), (width_2, out_2) = outputs
    assert out.shape[1] - width == 3 and out_2.shape[1] - width_2 <= 12
    assert all(b.startswith(a) and len(a) < len(b) for a, b in zip(short, longer, strict=True))


class _CountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.mark.parametrize("stop", [None, "mid"])
def test_streaming_writes_the_returned_text_as_it_is_generated(llama, chat_tokenizer, stop):
    text = generate(llama, chat_tokenizer, PROMPTS[1:2], _greedy(max_new_tokens=24))[0]
    stops = [text[10:13]] if stop else []
    stream = _CountingStream()
    returned = generate(
        llama, chat_tokenizer, PROMPTS[1:2], _greedy(max_new_tokens=24, stop=stops), stream=stream
    )
    assert stream.getvalue() == returned[0] and stream.writes > 2
    if stop:
        assert returned[0] == text[: text.find(stops[0])]
    sampled = GenerationOptions(max_new_tokens=24, seed=1)
    stream = io.StringIO()
    assert generate(llama, chat_tokenizer, PROMPTS[:1], sampled, stream=stream) == [
        stream.getvalue()
    ]
    with pytest.raises(ValueError, match="one completion"):
        generate(llama, chat_tokenizer, PROMPTS, sampled, stream=io.StringIO())


def test_chat_prompts_go_through_the_template(llama, chat_tokenizer, monkeypatch):
    seen = []
    original = llama.generate

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(llama, "generate", spy)
    out = generate(llama, chat_tokenizer, ["hello"], _greedy(max_new_tokens=4), chat=True)
    assert isinstance(out[0], str)
    prompt = chat_tokenizer.decode(seen[0]["input_ids"][0])
    assert prompt == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    eos = seen[0]["generation_config"].eos_token_id
    assert (
        chat_tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
        and chat_tokenizer.eos_token_id in eos
    )


def test_empty_prompt_is_an_error(llama, chat_tokenizer):
    with pytest.raises(LmforgeError, match="prompt 2 is empty"):
        generate(llama, chat_tokenizer, ["hi", ""], _greedy())


def test_learned_positions_cap_max_new_tokens_rotary_ones_go_on(llama, chat_tokenizer):
    from lmforge.generation.generate import complete

    gpt2 = _gpt2(chat_tokenizer)  # 256 learned positions: a row past the last does not exist
    prompt = "q " * 110  # "q" and " " are tokens of their own
    length = len(chat_tokenizer(prompt)["input_ids"])
    assert 200 <= length < 250
    (capped,) = complete(gpt2, chat_tokenizer, [prompt], _greedy(max_new_tokens=80))
    assert capped.completion_tokens <= 256 - length
    (rotary,) = complete(
        llama, chat_tokenizer, [prompt], _greedy(max_new_tokens=80)
    )  # past 256, as in HF
    assert rotary.completion_tokens > 256 - length or rotary.finish_reason == "stop"
    with pytest.raises(LmforgeError, match="over the model's 256 positions"):
        complete(gpt2, chat_tokenizer, ["q " * 150], _greedy())


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"temperature": 0}, "temperature must be > 0 when sampling"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop": "###"}, "one-item list"),
        ({"stop": [""]}, "non-empty strings"),
        ({"seed": -1}, "seed"),
    ],
)
def test_generation_options_are_validated(kwargs, expected):
    with pytest.raises(LmforgeError, match=expected):
        GenerationOptions(**kwargs)
    GenerationOptions(greedy=True, temperature=0)  # temperature is unused when greedy


# --- metrics -----------------------------------------------------------------------------------


def test_exact_match_normalizes_whitespace_only():
    assert exact_match(
        ["  Paris ", "the  cat\nsat", "Rome", "paris"], ["Paris", "the cat sat", "Berlin", "Paris"]
    ) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])


def test_rouge_l_on_a_hand_computed_example():
    # LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = F = 5/6.
    assert rouge_l(["the cat sat on the mat"], ["the cat was on the mat"]) == pytest.approx(5 / 6)
    # Reversed order: LCS = 1 token, P = R = F = 1/4.
    assert rouge_l(["a b c d"], ["d c b a"]) == pytest.approx(1 / 4)
    # LCS "police gunman" = 2: P = 2/3, R = 2/4, F = 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7.
    assert rouge_l(["police gunman x"], ["police killed the gunman"]) == pytest.approx(4 / 7)
    # Tokens are whitespace-separated and compared exactly: "kill" is not "killed".
    assert rouge_l(["police kill the gunman"], ["police killed the gunman"]) == pytest.approx(3 / 4)
    assert rouge_l(["", "", "x"], ["", "y", "x"]) == pytest.approx(2 / 3)  # 1 (both empty), 0, 1
    assert rouge_l(
        ["the cat sat on the mat", "a b c d"], ["the cat was on the mat", "d c b a"]
    ) == pytest.approx((5 / 6 + 1 / 4) / 2)


# --- LoRA and the chat markers it adds -----------------------------------------------------------


def test_lora_trains_the_new_marker_embeddings_and_nothing_else_of_the_table():
    """With new_token_ids, LoRA trains those embedding rows (tied to the LM head) and leaves the
    rest."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.methods import MethodSetting, get_method
    from lmforge.methods.peft_methods import LoraOptions

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    )
    model.resize_token_embeddings(42)
    before = model.get_input_embeddings().weight.detach().clone()
    peft_model = get_method("lora").apply(
        model, MethodSetting(LoraOptions(r=4), "CAUSAL_LM", new_token_ids=(40, 41))
    )
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[1, 40, 5, 7, 41, 2, 40, 9]])
    for _ in range(3):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    merged = peft_model.merge_and_unload()
    after = merged.get_input_embeddings().weight.detach()
    assert (after[40:] - before[40:]).abs().amax(dim=1).min() > 1e-3  # both new rows trained
    assert torch.equal(after[:40], before[:40])  # the pretrained rows did not move
    assert (
        merged.get_output_embeddings().weight.data_ptr()
        == merged.get_input_embeddings().weight.data_ptr()
    )


SIMPLE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if m['role'] == 'assistant' %}"
    "{{ eos_token }}{% endif %}; {% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.mark.parametrize("source", ["string", "file"])
def test_chat_template_from_the_config_replaces_the_default(tmp_path, source):
    import yaml

    from lmforge.config import load_config
    from lmforge.runs import task_options
    from lmforge.tasks.chat import Chat

    value = SIMPLE_TEMPLATE
    if source == "file":  # a relative path resolves against the config file
        (tmp_path / "simple.jinja").write_text(SIMPLE_TEMPLATE, encoding="utf-8")
        value = "simple.jinja"
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump({"task": "chat", "data": {"chat_template": value}})
    )
    cfg = load_config(tmp_path / "run.yaml")
    task, tokenizer = Chat(), tiny_bpe_tokenizer()
    size = len(tokenizer)
    task.configure(task_options(cfg))
    task.bind(tokenizer)
    assert (
        tokenizer.chat_template == SIMPLE_TEMPLATE
        and len(tokenizer) == size
        and task.new_token_ids == []
    )
    encoded = encode_conversation(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}], tokenizer, 64
    )
    assert (
        tokenizer.decode(encoded.input_ids)
        == "user: hi; assistant: ok" + tokenizer.eos_token + "; "
    )
    targets = tokenizer.decode(encoded.labels[encoded.labels != IGNORE_INDEX])
    assert (
        targets.strip().startswith("ok" + tokenizer.eos_token) and "hi" not in targets
    )  # the answer only


def test_chatml_from_the_config_overrides_the_tokenizers_template_and_a_missing_file_fails():
    from lmforge.tasks.chat import Chat

    tokenizer = tiny_bpe_tokenizer()
    tokenizer.chat_template = SIMPLE_TEMPLATE
    task = Chat()
    task.configure({"chat_template": "chatml"})
    task.bind(tokenizer)
    assert "<|im_start|>" in tokenizer.chat_template and len(task.new_token_ids) == 2
    task.configure({"chat_template": "no/such/template.jinja"})
    with pytest.raises(
        LmforgeError, match="data.chat_template: file no/such/template.jinja not found"
    ):
        task.bind(tiny_bpe_tokenizer())
