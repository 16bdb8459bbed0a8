"""Adversarial training on the word embeddings: FGM and PGD.

Text is discrete, so the attack moves the continuous word embeddings instead (Miyato et al.
2017, "Adversarial Training Methods for Semi-Supervised Text Classification"; the usual NLP
practice). The perturbation ``r`` (B, T, H) is added to the *output* of the word-embedding
module by a forward hook, not to the embedding table: the table is never written (so every
parameter stays bit-for-bit unchanged and nothing has to be restored), only this batch's
tokens move (as in Miyato et al.), and it works when the table is frozen (LoRA).

- FGM (Miyato et al. 2017): one step, ``r = epsilon * g / ||g||``.
- PGD (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
  Attacks"): ``steps`` steps ``r <- Proj_{||r|| <= epsilon}(r + alpha * g / ||g||)``.

``g`` is the gradient of the loss w.r.t. the embedding output. The first ``g`` comes for free
from the caller's normal backward (a tensor hook reads it), so FGM costs one extra forward
and backward per micro-batch and PGD ``steps``. Norms are L2 per example over all of its
tokens (T, H), as in Miyato et al.: each sequence gets a budget of ``epsilon`` whatever the
batch size, the accumulation split or the number of processes; a per-token norm would move
every token, padding included, by ``epsilon`` and make the attack grow with the length.

Use in a training loop (hooks are installed by :func:`make_adversary`)::

    adversary = make_adversary(model, kind="pgd", epsilon=0.2, alpha=0.06, steps=3)
    for batch in loader:
        loss = model(**batch).loss  # the hook notes the embedding output
        accelerator.backward(loss)  # ... and reads its gradient
        if adversary is not None:  # adds the adversarial loss's gradients to the same .grad
            adv_loss = adversary.train_step(lambda: model(**batch).loss, accelerator.backward)

The config keys are ``regularization.adversarial`` (fgm | pgd | none),
``regularization.adversarial_epsilon``, ``regularization.adversarial_alpha`` and
``regularization.adversarial_steps``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from lmforge.errors import LmforgeError, did_you_mean

KINDS = ("fgm", "pgd", "none")


def find_embedding_module(model: nn.Module) -> nn.Module:
    """The module that maps token ids to word vectors (``get_input_embeddings()``).

    Hugging Face models and PEFT wrappers answer ``get_input_embeddings`` themselves; a
    wrapper without it (lmforge's ``BiEncoder``, DDP) is searched for the first submodule
    that has it.

    Raises:
        LmforgeError: when no submodule exposes its input embeddings.
    """
    for module in model.modules():  # the model itself comes first
        getter = getattr(module, "get_input_embeddings", None)
        if not callable(getter):
            continue
        try:
            embeddings = getter()
        except NotImplementedError:  # a PreTrainedModel that does not define it
            continue
        if isinstance(embeddings, nn.Module) and isinstance(
            getattr(embeddings, "weight", None), torch.Tensor
        ):
            return embeddings
    raise LmforgeError(
        f"regularization.adversarial: cannot find the word embeddings of {type(model).__name__} "
        "(no get_input_embeddings()); set regularization.adversarial: none"
    )


def find_word_embeddings(model: nn.Module) -> nn.Parameter:
    """The input word-embedding table (V, H) of ``model`` (Hugging Face, PEFT or a wrapper)."""
    return find_embedding_module(model).weight


def _per_example(norm: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-example values (B,) to broadcast against ``like`` (B, ...)."""
    return norm.view(-1, *([1] * (like.dim() - 1)))


def _l2_per_example(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example over all its other dims, in float32: (B, T, H) -> (B,)."""
    return x.float().flatten(1).norm(dim=1)


def _unit(g: torch.Tensor) -> torch.Tensor:
    """``g / ||g||`` per example (float32); zero for an example whose norm is 0 or not finite.

    A zero gradient (e.g. an example whose loss is masked out) has no direction; an inf or
    NaN one comes from an fp16 overflow step that the loss scaler is about to skip.
    """
    norm = _l2_per_example(g)  # (B,)
    usable = torch.isfinite(norm) & (norm > 0)  # (B,)
    scale = torch.where(usable, 1.0 / norm, torch.zeros_like(norm))  # (B,)
    # where(), not a product: inf * 0 would be NaN.
    return torch.where(
        _per_example(usable, g), g.float() * _per_example(scale, g), 0.0
    )  # (B, T, H)


def _project(r: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Scale each example of ``r`` back onto the L2 ball of radius ``epsilon`` if it left it."""
    norm = _l2_per_example(r)  # (B,)
    factor = torch.where(
        norm > epsilon, epsilon / norm.clamp(min=1e-12), torch.ones_like(norm)
    )  # (B,)
    return r * _per_example(factor, r)  # (B, T, H)


class EmbeddingAdversary:
    """FGM / PGD on the output of the word-embedding module; see the module docstring.

    Two hooks stay on the model until :meth:`remove`: a forward pre-hook on ``model`` that
    numbers the embedding calls of each forward from 0 (a bi-encoder embeds queries and
    documents in one forward; each call gets its own perturbation), and a forward hook on
    the embedding module. Outside :meth:`train_step`, when autograd is on, that hook notes
    the gradient reaching each embedding output (the clean ``g``); inside, it adds the
    current perturbation. With autograd off (evaluation) it does nothing.

    FGM is this class with ``steps=1`` and ``alpha=epsilon``: ``Proj(epsilon * g/||g||)``
    is ``epsilon * g/||g||``.

    Args:
        model: the module the loop calls (a Hugging Face model, a PEFT model, a wrapper).
        epsilon: radius of the per-example L2 ball.
        alpha: PGD step size.
        steps: attack steps, each one extra forward and backward.
        kind: the name reported in logs ("fgm" or "pgd").
    """

    def __init__(
        self, model: nn.Module, epsilon: float, alpha: float, steps: int, kind: str = "pgd"
    ):
        self.kind = kind
        self.epsilon = float(epsilon)
        self.alpha = float(alpha)
        self.steps = int(steps)
        self.embeddings = find_embedding_module(model)
        self._call = 0  # index of the next embedding call in the current forward
        self._clean_grads: dict[int, torch.Tensor] = {}  # call index -> dL/d(embedding output)
        self._attack: list[torch.Tensor | None] | None = None  # perturbations while attacking
        self._outputs: list[torch.Tensor] = []  # perturbed embedding outputs of the attack forward
        self.perturbations: list[torch.Tensor] = []  # those of the last adversarial forward
        self._handles = [
            model.register_forward_pre_hook(self._on_model_forward),
            self.embeddings.register_forward_hook(self._on_embedding_output),
        ]

    def remove(self) -> None:
        """Take the hooks off the model; the adversary cannot be used afterwards."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._clean_grads, self._outputs = {}, []

    # Hooks -------------------------------------------------------------------------------

    def _on_model_forward(self, module: nn.Module, args: tuple[object, ...]) -> None:
        self._call = 0
        if self._attack is None:  # a new clean forward: older gradients belong to another batch
            self._clean_grads = {}

    def _on_embedding_output(
        self, module: nn.Module, args: tuple[object, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        index = self._call
        self._call += 1
        if not torch.is_grad_enabled():
            return None
        if self._attack is not None:
            r = self._attack[index] if index < len(self._attack) else None
            if r is not None and r.shape != output.shape:
                raise RuntimeError(
                    f"adversarial perturbation {tuple(r.shape)} does not fit embedding output "
                    f"{tuple(output.shape)}: train_step must run the batch of the clean backward"
                )
            out = output if r is None else output + r.to(output.dtype)  # (B, T, H)
            out = self._differentiable(out)
            self._outputs.append(out)
            return out
        out = self._differentiable(output)
        out.register_hook(functools.partial(self._store_clean_grad, index))
        return out

    @staticmethod
    def _differentiable(x: torch.Tensor) -> torch.Tensor:
        """``x``, made to require grad when the table is frozen (LoRA), so dL/dx exists.

        A tensor that does not require grad has no history, so switching it on is allowed
        and changes no parameter's gradient: nothing upstream of it is trainable.
        """
        return x if x.requires_grad else x.requires_grad_()

    def _store_clean_grad(self, index: int, grad: torch.Tensor) -> None:
        self._clean_grads[index] = grad.detach()

    # The attack --------------------------------------------------------------------------

    def train_step(
        self, compute_loss: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None]
    ) -> float:
        """Add the gradients of the adversarial loss to the parameters' ``.grad``.

        Call it right after the clean loss's backward, for the same batch. PGD's
        intermediate steps take ``torch.autograd.grad`` w.r.t. the embedding outputs only,
        so their gradients never reach any parameter's ``.grad`` (the FreeLB / "PGD for
        NLP" recipes save the parameter grads, zero them and restore them instead: the same
        result, with an extra copy of every gradient and wasted weight-gradient work).
        Only the last step's loss goes through ``backward``.

        Args:
            compute_loss: runs the forward of this batch and returns the loss to backward
                (scaled for gradient accumulation as the caller likes).
            backward: the loop's backward (``accelerator.backward`` or ``Tensor.backward``).

        Returns:
            The last adversarial loss, as returned by ``compute_loss``.

        Raises:
            RuntimeError: no clean gradient was seen (no backward of a clean forward since
                the last ``train_step``), or the hooks were removed.
        """
        if not self._handles:
            raise RuntimeError("this adversary was removed from its model")
        if not self._clean_grads:
            raise RuntimeError("adversary.train_step needs the backward of the clean loss first")
        grads = [self._clean_grads.get(i) for i in range(max(self._clean_grads) + 1)]
        self._clean_grads = {}  # each clean gradient serves one attack
        r = self._step([None] * len(grads), grads)
        for _ in range(self.steps - 1):
            loss = self._attack_forward(compute_loss, r)
            grads = self._grads_at_outputs(loss)
            r = self._step(r, grads)
        loss = self._attack_forward(compute_loss, r)
        self._outputs = []
        backward(loss)  # parameter grads: clean + adversarial(r_K)
        return float(loss.detach())

    def _step(
        self, r: list[torch.Tensor | None], grads: list[torch.Tensor | None]
    ) -> list[torch.Tensor | None]:
        """One ascent step per embedding call: ``Proj(r + alpha * g/||g||)``."""
        out: list[torch.Tensor | None] = []
        with torch.no_grad():
            for r_i, g_i in zip(r, grads, strict=True):
                if g_i is None:  # this call's output did not reach the loss
                    out.append(r_i)
                    continue
                moved = self.alpha * _unit(g_i)  # (B, T, H) float32
                out.append(_project(moved if r_i is None else r_i + moved, self.epsilon))
        return out

    def _attack_forward(
        self, compute_loss: Callable[[], torch.Tensor], r: list[torch.Tensor | None]
    ) -> torch.Tensor:
        """The loss with ``r`` added to the embedding outputs (hooks in attack mode)."""
        self._attack, self._outputs, self._call = r, [], 0
        try:
            loss = compute_loss()
        finally:
            self._attack = None
        self.perturbations = [x.detach() for x in r if x is not None]
        return loss

    def _grads_at_outputs(self, loss: torch.Tensor) -> list[torch.Tensor | None]:
        """dL/d(perturbed embedding output) per call, leaving every ``.grad`` untouched."""
        outputs, self._outputs = self._outputs, []
        return list(torch.autograd.grad(loss, outputs, allow_unused=True))


def _check_positive(key: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise LmforgeError(f"regularization.{key} must be a positive number, got {value!r}")


def make_adversary(
    model: nn.Module, kind: str = "none", epsilon: float = 0.2, alpha: float = 0.06, steps: int = 3
) -> EmbeddingAdversary | None:
    """The adversary for ``regularization.adversarial``, hooked onto ``model``; None for "none".

    Args:
        model: the module the loop calls.
        kind: ``regularization.adversarial``: "fgm", "pgd" or "none".
        epsilon: ``regularization.adversarial_epsilon``, the per-example L2 radius.
        alpha: ``regularization.adversarial_alpha``, PGD's step size (FGM steps by ``epsilon``).
        steps: ``regularization.adversarial_steps``, PGD's number of steps (FGM takes one).

    Raises:
        LmforgeError: an unknown kind, or a non-positive epsilon / alpha / steps.
    """
    if kind not in KINDS:
        raise LmforgeError(
            f"regularization.adversarial: unknown kind {kind!r}{did_you_mean(str(kind), KINDS)}; "
            "use fgm, pgd or none"
        )
    if kind == "none":
        return None
    _check_positive("adversarial_epsilon", epsilon)
    _check_positive("adversarial_alpha", alpha)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LmforgeError(
            f"regularization.adversarial_steps must be a whole number >= 1, got {steps!r}"
        )
    if kind == "fgm":
        return EmbeddingAdversary(model, epsilon, alpha=epsilon, steps=1, kind="fgm")
    return EmbeddingAdversary(model, epsilon, alpha=alpha, steps=steps, kind="pgd")
