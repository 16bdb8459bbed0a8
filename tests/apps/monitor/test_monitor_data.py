"""The monitor's streams: the converter of the real data sets (examples/converters/
monitor_streams.py) on tiny inline samples and, slow, on ../shared/data; the packaged demo stream
and the generator that made it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

import pytest

from lmforge.apps.monitor.config import Fields
from lmforge.apps.monitor.data import make_demo_stream
from lmforge.apps.monitor.documents import to_document

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data"
CONVERTER = ROOT / "examples" / "converters" / "monitor_streams.py"
UTC = timezone.utc

# Four stories in the files' own quirks: a body ending in the wire's sign-off and &#3;, a brief
# without a BODY, a date no parser takes (31 February), and an earlier story that says "told
# Reuters." at the end of its last sentence (not a sign-off) followed by one.
SGML = """<!DOCTYPE lewis SYSTEM "lewis.dtd">
<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" CGISPLIT="TRAINING-SET" OLDID="5544" NEWID="1">
<DATE>26-FEB-1987 15:01:01.79</DATE>
<TOPICS><D>cocoa</D></TOPICS>
<TEXT>&#2;
<TITLE>BAHIA COCOA REVIEW</TITLE>
<DATELINE>    SALVADOR, Feb 26 - </DATELINE><BODY>Showers continued throughout the week in
the Bahia cocoa zone, alleviating the drought.
    Arrivals were 155,221 bags, Comissaria Smith &lt;CS> said.
 Reuter
&#3;</BODY></TEXT>
</REUTERS>
<REUTERS TOPICS="NO" LEWISSPLIT="TRAIN" CGISPLIT="TRAINING-SET" OLDID="5545" NEWID="2">
<DATE>26-FEB-1987 15:02:20.00</DATE>
<TOPICS></TOPICS>
<TEXT TYPE="BRIEF">&#2;
******<TITLE>STANDARD OIL &lt;SRD> TO FORM FINANCIAL UNIT
</TITLE>
&#3;
</TEXT>
</REUTERS>
<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" CGISPLIT="TRAINING-SET" OLDID="5546" NEWID="3">
<DATE>31-FEB-1987 15:03:00.00</DATE>
<TOPICS><D>earn</D></TOPICS>
<TEXT>&#2;
<TITLE>A STORY FROM NO DAY</TITLE>
<BODY>Net profit rose.
 Reuter
&#3;</BODY></TEXT>
</REUTERS>
<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" CGISPLIT="TRAINING-SET" OLDID="5547" NEWID="10">
<DATE>25-FEB-1987 09:30:00.00</DATE>
<TOPICS><D>acq</D><D>earn</D></TOPICS>
<TEXT>&#2;
<TITLE>ACME &lt;ACM> IN TALKS</TITLE>
<BODY>Acme is in talks with a buyer, a spokesman
told Reuters.
 REUTER...
&#3;</BODY></TEXT>
</REUTERS>
"""


@pytest.fixture(scope="module")
def converter():
    spec = importlib.util.spec_from_file_location("monitor_streams", CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shared(tmp_path) -> Path:
    """A tiny ../shared/data: one .sgm file, two FOMC releases, the source's ``.xt`` (sic)
    and a file whose name is no date."""
    reuters = tmp_path / "data" / "reuters21578"
    reuters.mkdir(parents=True)
    (reuters / "reut2-000.sgm").write_text(SGML, encoding="latin-1")
    statements = tmp_path / "data" / "fomc_statements" / "statements"
    notes = tmp_path / "data" / "fomc_statements" / "implementation_notes"
    statements.mkdir(parents=True)
    notes.mkdir()
    (statements / "20150128.txt").write_text(
        "The Committee decided today to keep the target range for the federal\n"
        "funds rate at 0 to 1/4 percent.\n \nVoting for the action were: Janet L.\n"
        "Yellen, Chair.\n"
    )
    (statements / "20080916.xt").write_text("The Committee decided today to keep its target.\n")
    (statements / "README.txt").write_text("not a release\n")
    (notes / "20160727.txt").write_text("The Federal Reserve has made the following\ndecisions.\n")
    return tmp_path / "data"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- the converter ---------------------------------------------------------------------------
def test_reuters_stories_with_a_body_become_records_in_utc_sorted_by_time(converter, shared):
    rows, skipped = converter.reuters_records(shared / "reuters21578")
    assert skipped == {"no body": 1, "no or unparseable date": 1}
    assert [r["id"] for r in rows] == ["reuters-10", "reuters-1"]  # by timestamp, not by NEWID
    earlier, story = rows
    # The DATE has no zone: UTC, as the monitor reads it; 15:01 stays 15:01.
    assert story["timestamp"] == "1987-02-26T15:01:01.790Z"
    assert earlier["timestamp"] == "1987-02-25T09:30:00Z"
    assert story["title"] == "BAHIA COCOA REVIEW"
    assert story["text"] == (
        "Showers continued throughout the week in the Bahia cocoa zone, alleviating the "
        "drought. Arrivals were 155,221 bags, Comissaria Smith <CS> said."
    )
    assert earlier["text"] == "Acme is in talks with a buyer, a spokesman told Reuters."
    assert (story["topics"], earlier["topics"]) == (["cocoa"], ["acq", "earn"])


def test_fomc_releases_at_1415_new_york_time_in_utc(converter, shared):
    rows, skipped = converter.fomc_records(shared / "fomc_statements")
    assert skipped == {"name is not YYYYMMDD": 1}
    by_id = {r["id"]: r for r in rows}
    ids = ["fomc-statement-20080916", "fomc-statement-20150128", "fomc-note-20160727"]
    assert list(by_id) == ids  # by timestamp
    assert by_id["fomc-statement-20150128"]["timestamp"] == "2015-01-28T19:15:00Z"  # EST
    assert by_id["fomc-note-20160727"]["timestamp"] == "2016-07-27T18:15:00Z"  # EDT
    assert by_id["fomc-statement-20080916"]["timestamp"] == "2008-09-16T18:15:00Z"  # the .xt
    assert by_id["fomc-statement-20150128"]["title"] == "FOMC statement 2015-01-28"
    # Hard-wrapped lines joined; the paragraphs (a blank line may hold a space) kept apart.
    assert by_id["fomc-statement-20150128"]["text"] == (
        "The Committee decided today to keep the target range for the federal funds rate at 0 "
        "to 1/4 percent.\n\nVoting for the action were: Janet L. Yellen, Chair."
    )


def test_converter_writes_both_streams_the_monitor_reads(converter, shared, tmp_path, capsys):
    out = tmp_path / "streams"
    assert converter.main([str(shared), str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"wrote 2 records to {out / 'reuters.jsonl'}, 2 skipped (1 no body, 1 no or "
        "unparseable date)",
        f"wrote 3 records to {out / 'fomc.jsonl'}, 1 skipped (1 name is not YYYYMMDD)",
    ]
    for name in ("reuters", "fomc"):
        records = read_jsonl(out / f"{name}.jsonl")
        documents = [to_document(r, name, Fields(), 100_000) for r in records]
        assert [d.id for d in documents] == [r["id"] for r in records]
        assert all(d.timestamp.tzinfo is not None for d in documents)
    story = to_document(read_jsonl(out / "reuters.jsonl")[1], "reuters", Fields(), 100_000)
    assert story.timestamp == datetime(1987, 2, 26, 15, 1, 1, 790_000, tzinfo=UTC)


def test_converter_without_the_data_folder_says_so_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(CONVERTER), str(tmp_path / "absent"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("monitor_streams: ") and result.stderr.count("\n") == 1
    assert "reuters21578/ and fomc_statements/" in result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_the_shared_reader_still_gives_reuters_to_jsonl_its_rows(converter):
    from reuters_to_jsonl import stories  # importable once the converter put its folder on path

    rows = list(stories(SGML))
    assert [r["has_topics"] for r in rows] == [True, False, True, True]
    assert rows[0]["text"].startswith("BAHIA COCOA REVIEW Showers continued")
    assert rows[1] == {
        "text": "STANDARD OIL <SRD> TO FORM FINANCIAL UNIT",
        "topics": [],
        "has_topics": False,
        "split": "TRAIN",
    }


# --- the demo stream ------------------------------------------------------------------------
def demo_records() -> list[dict]:
    stream = resources.files("lmforge.apps.monitor.data").joinpath("demo_stream.jsonl")
    return [json.loads(line) for line in stream.read_text(encoding="utf-8").splitlines()]


def day_of(record: dict) -> int:
    """1-based day of the stream."""
    return (
        to_document(record, "demo", Fields(), 100_000).timestamp - make_demo_stream.START
    ).days + 1


def test_demo_stream_is_14_days_of_valid_unique_documents():
    records = demo_records()
    documents = [to_document(r, "demo", Fields(), 100_000) for r in records]
    assert len({d.id for d in documents}) == len(records)
    assert [d.id for d in documents[:2]] == ["demo-0001", "demo-0002"]
    assert len({d.text for d in documents}) == len(records)
    assert all(d.title for d in documents)
    times = [d.timestamp for d in documents]
    assert times == sorted(times)
    start = datetime(2026, 3, 2, tzinfo=UTC)
    assert start <= times[0] and times[-1] < start + timedelta(days=14)
    per_day = Counter(day_of(r) for r in records)
    assert sorted(per_day) == list(range(1, 15))
    assert all(20 <= n <= 40 for n in per_day.values()), per_day
    assert {r["topic"] for r in records} == {"earnings", "rates", "mergers", "banking"}
    assert {r["sentiment"] for r in records} == {"negative", "neutral", "positive"}
    assert all(10 <= len(r["text"].split()) <= 40 for r in records)
    stream = resources.files("lmforge.apps.monitor.data").joinpath("demo_stream.jsonl")
    assert len(stream.read_bytes()) < 150_000


def test_demo_stream_has_one_negative_banking_surge_on_days_10_and_11():
    records = demo_records()
    surge = [r for r in records if day_of(r) in (10, 11)]
    other = [r for r in records if day_of(r) not in (10, 11)]

    def banking_negative_share(rows: list[dict]) -> float:
        banking = [r for r in rows if r["topic"] == "banking"]
        return sum(r["sentiment"] == "negative" for r in banking) / len(banking)

    assert banking_negative_share(surge) > 0.6
    assert banking_negative_share(other) < 0.3
    # More banking news on the surge days, and the rest of the stream mostly calm (~15%).
    banking_per_day = Counter(day_of(r) for r in records if r["topic"] == "banking")
    calm = [n for day, n in banking_per_day.items() if day not in (10, 11)]
    assert min(banking_per_day[10], banking_per_day[11]) > 2 * max(calm)
    negative_elsewhere = sum(r["sentiment"] == "negative" for r in other) / len(other)
    assert 0.08 < negative_elsewhere < 0.22


def test_demo_stream_generator_reproduces_the_shipped_file(tmp_path, capsys):
    written = make_demo_stream.main(tmp_path / "demo_stream.jsonl")
    shipped = resources.files("lmforge.apps.monitor.data").joinpath("demo_stream.jsonl")
    assert written.read_bytes() == shipped.read_bytes()
    assert "wrote" in capsys.readouterr().out


# --- the real data --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED / "reuters21578").is_dir() or not (SHARED / "fomc_statements").is_dir(),
    reason="../shared/data (reuters21578/, fomc_statements/) is absent",
)
def test_converter_on_the_real_data(converter, tmp_path, capsys):
    assert converter.main([str(SHARED), str(tmp_path)]) == 0
    reuters = read_jsonl(tmp_path / "reuters.jsonl")
    _, skipped = converter.reuters_records(SHARED / "reuters21578")
    # The README: 5,000 stories, 4,584 with a BODY; every DATE parses.
    assert skipped == {"no body": 5000 - 4584}
    assert len(reuters) == 4584 - skipped["no or unparseable date"]
    fomc = read_jsonl(tmp_path / "fomc.jsonl")
    assert len(fomc) == 167  # 160 statements (one named 20080916.xt) and 7 implementation notes
    assert Counter(r["id"].split("-")[1] for r in fomc) == {"statement": 160, "note": 7}
    assert "fomc-statement-20080916" in {r["id"] for r in fomc}
    for name, records in (("reuters", reuters), ("fomc", fomc)):
        documents = [to_document(r, name, Fields(), 100_000) for r in records]
        assert len({d.id for d in documents}) == len(documents)
        assert [d.timestamp for d in documents] == sorted(d.timestamp for d in documents)
    assert reuters[0]["timestamp"].startswith("1987-02-26") and reuters[-1]["timestamp"] < "1987-04"
    assert not any("&#" in r["text"] or r["text"].lower().endswith(" reuter") for r in reuters)
