"""Write demo_stream.jsonl: 14 days of short financial news about fictional companies, with one
injected negative surge, for trying ``lmforge monitor`` without data of one's own.

    python -m lmforge.apps.monitor.data.make_demo_stream

Every record is one sentence (10-40 words) on one of four topics (earnings, rates, mergers,
banking), written from templates with fictional names and random numbers, at a random time of
its day, from 2026-03-02T00:00:00Z on. A normal day has 20-30 documents, the topics in equal
parts, about 14% of them negative. On days 10 and 11 (2026-03-11 and 03-12) 16 extra banking
documents a day, 14 of them negative (deposit outflows, downgrades, liquidity worries), are the
surge a rule should catch. The true ``topic`` and ``sentiment`` are kept as extra fields for
evaluation. Seeded and stdlib only, so a rerun rewrites the file byte for byte.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

STREAM = Path(__file__).with_name("demo_stream.jsonl")
SEED = 20260302
START = datetime(2026, 3, 2, tzinfo=timezone.utc)
DAYS = 14
SURGE_DAYS = (10, 11)  # 1-based: the 10th and 11th day
SURGE_DOCUMENTS = 16  # extra banking documents on each surge day, of which
SURGE_NEGATIVE = 14  # this many are negative
# A day's mix is drawn to these shares (not sampled one by one), so that no ordinary day looks
# like a surge by chance; the topics take turns.
NEGATIVE_SHARE, POSITIVE_SHARE = 0.14, 0.36
SENTIMENTS = ("negative", "neutral", "positive")
TOPICS = ("earnings", "rates", "mergers", "banking")

COMPANIES = (
    "Brackwater Foods", "Corvane Systems", "Dunmore Steel", "Elstree Media", "Galloway Pharma",
    "Garrow Logistics", "Halden Motors", "Islay Textiles", "Jessamine Energy", "Kilbride Retail",
    "Larchmont Software", "Marlow Cement", "Norcastle Airlines", "Oakhurst Paper",
    "Pemberly Foods", "Quarry Hill Mining", "Ravelston Telecom", "Saltmarsh Shipping",
    "Tavistock Instruments", "Ulverton Chemicals", "Varga Robotics", "Wexcombe Brewing",
    "Yardley Semiconductors", "Zennor Solar",
)  # fmt: skip
BANKS = (
    "Harwick Bank", "Calder Mutual", "Northmere Trust", "Ashby Savings Bank", "Brennock Bank",
    "Castellan Bank", "Durnford Building Society", "Fairhaven Bank", "Glenmoor Credit Union",
    "Kingsmere Bank", "Lowell Street Bank", "Marsden Federal", "Redfern Savings",
    "Westbury Commercial Bank",
)  # fmt: skip
CENTRAL_BANKS = (
    "the Norland central bank", "the Central Bank of Estavia", "the Monetary Authority of Veloria",
    "the Ostmark Reserve Bank", "the Bank of Calderra",
)  # fmt: skip
ADVISERS = ("Ashgrove Capital", "Merriden & Co", "Stellbrook Advisory", "Holloway Partners")
SEGMENTS = ("packaging", "consumer", "industrial", "logistics", "software", "retail", "medical")
CURRENCIES = ("dollars", "euros", "pounds", "francs")
QUARTERS = ("first", "second", "third", "fourth")
ORDINALS = ("third", "fourth", "fifth", "sixth", "seventh")
MONTHS = ("March", "April", "May", "June")

# (title, text) per topic and sentiment; {slots} are filled by `slots`. One sentence each.
TEMPLATES = {
    ("earnings", "positive"): [
        ("{company} profit jumps", "{company} reported {quarter}-quarter net profit of {amount} "
         "million {cur}, up {pct} percent from a year earlier, and raised its full-year outlook."),
        ("{company} beats forecasts", "{company} beat analyst forecasts as {quarter}-quarter "
         "revenue rose {pct} percent to {bn} billion {cur} on strong demand in its core markets."),
        ("{company} lifts dividend", "{company} will raise its dividend by {pct} percent after "
         "record annual earnings of {amount} million {cur}."),
        ("{company} margins widen", "{company}'s operating margin widened to {pct} percent in the "
         "{quarter} quarter as cost savings of {amount} million {cur} came through early."),
        ("{company} raises guidance", "Shares in {company} rose {pct} percent after the company "
         "raised its annual sales guidance to {bn} billion {cur}."),
    ],
    ("earnings", "neutral"): [
        ("{company} results date", "{company} will publish its {quarter}-quarter results on "
         "{day} {month} and hold a call with analysts the same afternoon."),
        ("{company} in line", "{company}'s {quarter}-quarter net profit of {amount} million "
         "{cur} was in line with the average analyst estimate."),
        ("{company} keeps outlook", "{company} kept its forecast of full-year revenue of about "
         "{bn} billion {cur} unchanged and will next review it in {month}."),
        ("{company} new segment", "{company} will report its {segment} business as a separate "
         "segment from the {quarter} quarter, and restated {amount} million {cur} of sales."),
        ("{company} sales flat", "Sales at {company} were flat at {bn} billion {cur} in the "
         "{quarter} quarter, as higher prices offset lower volumes."),
    ],
    ("earnings", "negative"): [
        ("{company} swings to loss", "{company} swung to a {quarter}-quarter net loss of {amount} "
         "million {cur} as demand weakened and input costs rose."),
        ("{company} cuts forecast", "{company} cut its full-year profit forecast for the second "
         "time this year, citing weak orders, and its shares fell {pct} percent."),
        ("{company} misses estimates", "{company}'s {quarter}-quarter revenue fell {pct} percent "
         "to {bn} billion {cur}, well short of analyst estimates."),
        ("{company} writes down unit", "{company} wrote down the value of its {segment} unit by "
         "{amount} million {cur} and suspended its dividend."),
        ("{company} profit warning", "{company} warned that annual operating profit will be about "
         "{pct} percent lower than last year because of falling prices in {month}."),
    ],
    ("rates", "positive"): [
        ("Inflation easing", "{cb} said inflation is falling back towards its target of {target} "
         "percent faster than expected, opening the way to lower borrowing costs."),
        ("Rate cut", "{cb} cut its main policy rate by {bp} basis points to {rate} percent, a "
         "move economists said would support business investment."),
        ("Bond yields ease", "Government bond yields fell to {rate} percent after {cb} signalled "
         "that further rate increases are unlikely this year."),
        ("Growth forecast raised", "{cb} raised its growth forecast for this year to {growth} "
         "percent, citing resilient consumer spending and easing price pressures."),
        ("Mortgage rates fall", "Average mortgage rates fell for a {nth} straight week to {rate} "
         "percent, giving home buyers relief after last year's increases."),
    ],
    ("rates", "neutral"): [
        ("Rates on hold", "{cb} left its main policy rate unchanged at {rate} percent, as "
         "{share} percent of the economists polled had expected."),
        ("Minutes due", "Minutes of the latest policy meeting of {cb}, which kept its rate "
         "at {rate} percent, will be published on {day} {month}."),
        ("Governor to speak", "The governor of {cb} will speak on the economic outlook at a "
         "banking conference on {day} {month}, the first speech since rates were held at {rate} "
         "percent."),
        ("Reserve rate unchanged", "{cb} said the interest rate it pays on bank reserves will "
         "stay at {rate} percent until its review on {day} {month}."),
        ("Markets price rate path", "Money markets are pricing about {bp} basis points of rate "
         "changes from {cb} over the next {count} months."),
    ],
    ("rates", "negative"): [
        ("Surprise rate rise", "{cb} unexpectedly raised its main rate by {bp} basis points to "
         "{rate} percent, warning that inflation remains stubbornly high."),
        ("Yields jump", "Bond yields jumped to {rate} percent, their highest in {years} years, "
         "after inflation data showed prices rising faster than {cb} expected."),
        ("Growth outlook cut", "{cb} cut its growth forecast to {growth} percent and warned that "
         "high borrowing costs are weighing on households and small firms."),
        ("Mortgage costs climb", "Average mortgage rates climbed to {rate} percent, squeezing "
         "household budgets and pushing home sales to a {years}-year low."),
    ],
    ("mergers", "positive"): [
        ("{company} agrees takeover", "{company} agreed to buy {company2} for {bn} billion {cur}, "
         "a deal both boards said would bring annual savings of {amount} million {cur}."),
        ("Shareholders back merger", "Shareholders of {company2} approved the {bn} billion {cur} "
         "merger with {company}, with {share} percent of votes in favour."),
        ("{company} wins clearance", "{company} won regulatory clearance for its {bn} billion "
         "{cur} acquisition of {company2}, and the deal should close in {month}."),
        ("{company} raises offer", "{company} raised its offer for {company2} to {price} {cur} a "
         "share, a premium of {pct} percent that the target's board recommended."),
    ],
    ("mergers", "neutral"): [
        ("{company} hires adviser", "{company} has hired {adviser} to advise on a possible sale "
         "of its {segment} division, which had sales of {amount} million {cur} last year."),
        ("{company} discloses stake", "{company} disclosed a {stake} percent stake in {company2} "
         "in a regulatory filing but said it has no plans to make an offer."),
        ("Tender offer timetable", "The tender offer by {company} for shares of {company2} at "
         "{price} {cur} each will run until {day} {month}."),
        ("{company} completes sale", "{company} completed the sale of its {segment} unit to "
         "{company2} for {amount} million {cur}, as agreed in {month}."),
    ],
    ("mergers", "negative"): [
        ("{company} deal collapses", "{company}'s planned {bn} billion {cur} merger with "
         "{company2} collapsed after the two sides failed to agree on price."),
        ("Regulator blocks deal", "Competition regulators blocked the {bn} billion {cur} takeover "
         "of {company2} by {company}, saying it would raise prices for customers."),
        ("{company2} rejects bid", "The board of {company2} rejected a {bn} billion {cur} "
         "approach from {company}, calling it opportunistic and far below fair value."),
        ("{company} merger writedown", "{company} booked a {amount} million {cur} impairment on "
         "its acquisition of {company2}, admitting it had overpaid."),
    ],
    ("banking", "positive"): [
        ("{bank} deposits grow", "{bank} said customer deposits grew {pct} percent in the "
         "{quarter} quarter and its core capital ratio rose to {cet1} percent."),
        ("{bank} upgraded", "A rating agency upgraded {bank} by one notch, citing a capital ratio "
         "of {cet1} percent, stable funding and falling bad loans."),
        ("{bank} record profit", "{bank} posted record {quarter}-quarter profit of {amount} "
         "million {cur} as lending margins improved."),
        ("{bank} bond in demand", "{bank}'s {bn} billion {cur} bond sale drew orders of "
         "{cover} times the amount offered, lowering its funding costs."),
    ],
    ("banking", "neutral"): [
        ("{bank} branch plan", "{bank} will open {count} branches in the north of the country "
         "next year and move {amount} staff from its head office."),
        ("{bank} names finance chief", "{bank} has appointed a new chief financial officer, who "
         "will join from {bank2} on {day} {month}."),
        ("{bank} loan book steady", "{bank}'s loan book was unchanged at {bn} billion {cur} at "
         "the end of the {quarter} quarter."),
        ("Stress test results due", "Results of the annual bank stress tests, which cover {bank} "
         "and {count} other lenders, will be published on {day} {month}."),
        ("{bank} savings rates", "{bank} will keep its easy-access savings rate at {growth} "
         "percent until the end of {month}."),
    ],
    ("banking", "negative"): [
        ("{bank} bad loans rise", "{bank} set aside an extra {amount} million {cur} for bad loans "
         "as more commercial property borrowers fell behind on payments."),
        ("{bank} profit falls", "{bank}'s {quarter}-quarter profit fell {pct} percent as loan "
         "losses mounted and lending margins narrowed."),
        ("{bank} fined", "{bank} was fined {amount} million {cur} by regulators for failures in "
         "its anti-money-laundering controls."),
        ("{bank} cuts jobs", "{bank} will cut {jobs} jobs and close {count} branches after a "
         "sharp drop in mortgage lending."),
    ],
}  # fmt: skip

# The surge: a run on mid-sized lenders, with the regulator's reassurance now and then.
SURGE_TEMPLATES = {
    "negative": [
        ("{bank} deposit outflows", "{bank} customers withdrew about {bn} billion {cur} of "
         "deposits in two days, as worries about its commercial property loans spread."),
        ("{bank} downgraded", "A rating agency downgraded {bank} by two notches to {rating}, "
         "citing deposit outflows and a weakening funding position."),
        ("{bank} shares plunge", "Shares in {bank} plunged {drop} percent as investors fled "
         "mid-sized lenders amid concerns over their liquidity."),
        ("{bank} taps emergency funds", "{bank} drew {bn} billion {cur} from the central bank's "
         "emergency lending facility to cover deposit withdrawals."),
        ("Bank funding costs soar", "Funding costs for mid-sized banks such as {bank} and "
         "{bank2} soared to {rate} percent as depositors moved money to the largest lenders."),
        ("{bank} liquidity worries", "{bank} said it was exploring options including a sale "
         "after its liquidity buffer fell to {cet1} percent of deposits."),
        ("Downgrade review", "A rating agency put {bank} and {bank2} on review for downgrade, "
         "warning that losing {pct} percent of deposits could force asset sales at a loss."),
        ("Queues at {bank}", "Depositors queued outside branches of {bank} for a second day, and "
         "the lender limited online withdrawals to {limit} {cur} a day."),
        ("{bank} credit lines cut", "Counterparties cut credit lines to {bank}, and its bonds "
         "fell to {cents} cents on the dollar as liquidity worries deepened."),
    ],
    "neutral": [
        ("Regulator watches deposits", "The banking regulator said it is monitoring deposit "
         "flows at {bank} and {bank2} closely and will publish figures on {day} {month}."),
        ("{bank} statement", "{bank} said it will give an update on its funding and its "
         "{bn} billion {cur} of deposits before markets open on {day} {month}."),
    ],
}  # fmt: skip


def slots(rng: random.Random) -> dict[str, str]:
    """Fresh names and numbers for one document (every template takes the slots it needs)."""
    company, company2 = rng.sample(COMPANIES, 2)
    bank, bank2 = rng.sample(BANKS, 2)
    return {
        "company": company,
        "company2": company2,
        "bank": bank,
        "bank2": bank2,
        "cb": rng.choice(CENTRAL_BANKS),
        "adviser": rng.choice(ADVISERS),
        "segment": rng.choice(SEGMENTS),
        "cur": rng.choice(CURRENCIES),
        "quarter": rng.choice(QUARTERS),
        "nth": rng.choice(ORDINALS),
        "month": rng.choice(MONTHS),
        "day": str(rng.randint(1, 28)),
        "amount": str(rng.randint(12, 980)),
        "bn": f"{rng.uniform(1.1, 19.9):.1f}",
        "pct": f"{rng.uniform(1.5, 24.5):.1f}",
        "drop": str(rng.randint(18, 61)),
        "rate": f"{rng.uniform(1.0, 6.5):.2f}",
        "bp": str(rng.choice((25, 50, 75))),
        "target": str(rng.choice((2, 3))),
        "growth": f"{rng.uniform(0.3, 3.4):.1f}",
        "years": str(rng.randint(3, 17)),
        "count": str(rng.randint(6, 40)),
        "jobs": f"{rng.randint(3, 48) * 50:,}",
        "share": f"{rng.uniform(71, 99):.1f}",
        "stake": f"{rng.uniform(3.0, 9.9):.1f}",
        "price": f"{rng.uniform(4, 90):.2f}",
        "cet1": f"{rng.uniform(9.5, 17.5):.1f}",
        "cover": f"{rng.uniform(2.1, 5.8):.1f}",
        "rating": rng.choice(("BBB-", "BB+", "BB", "BB-")),
        "limit": f"{rng.randint(2, 20) * 500:,}",
        "cents": str(rng.randint(54, 88)),
    }


def write_document(rng: random.Random, templates: list[tuple[str, str]], seen: set[str]):
    """A (title, text) pair whose text is not in ``seen`` yet; redraws on a repeat."""
    for _ in range(100):
        title, text = rng.choice(templates)
        values = slots(rng)
        text = text.format(**values)
        text = text[0].upper() + text[1:]  # "{cb} cut ..." starts with "the ..."
        if text not in seen:
            seen.add(text)
            return title.format(**values), text
    raise AssertionError("100 draws gave only texts already written: add templates or slots")


def day_plan(rng: random.Random, day: int) -> list[tuple[str, str, bool]]:
    """``(topic, sentiment, is_surge)`` for each document of a day (1-based)."""
    size = rng.randint(20, 24) if day in SURGE_DAYS else rng.randint(20, 30)
    negative = round(size * NEGATIVE_SHARE) + rng.choice((-1, 0, 1))
    positive = round(size * POSITIVE_SHARE)
    sentiments = ["negative"] * negative + ["positive"] * positive
    sentiments += ["neutral"] * (size - len(sentiments))
    topics = [TOPICS[i % len(TOPICS)] for i in range(size)]
    rng.shuffle(topics)
    plan = [(topic, sentiment, False) for topic, sentiment in zip(topics, sentiments, strict=True)]
    if day in SURGE_DAYS:
        surge = ["negative"] * SURGE_NEGATIVE + ["neutral"] * (SURGE_DOCUMENTS - SURGE_NEGATIVE)
        plan += [("banking", sentiment, True) for sentiment in surge]
    return plan


def build_stream(seed: int = SEED) -> list[dict]:
    """The records in timestamp order, ids ``demo-0001``... in that order."""
    rng = random.Random(seed)
    drafts, seen = [], set()
    for day in range(1, DAYS + 1):
        for topic, sentiment, is_surge in day_plan(rng, day):
            templates = SURGE_TEMPLATES[sentiment] if is_surge else TEMPLATES[topic, sentiment]
            title, text = write_document(rng, templates, seen)
            moment = START + timedelta(days=day - 1, seconds=rng.randrange(86_400))
            drafts.append((moment, text, title, topic, sentiment))
    drafts.sort()
    return [
        {
            "id": f"demo-{i:04d}",
            "timestamp": moment.isoformat().replace("+00:00", "Z"),
            "title": title,
            "text": text,
            "topic": topic,
            "sentiment": sentiment,
        }
        for i, (moment, text, title, topic, sentiment) in enumerate(drafts, start=1)
    ]


def check(records: list[dict]) -> None:
    """The promises the docs make about the stream."""
    texts = [r["text"] for r in records]
    assert len(set(texts)) == len(texts), "texts repeat"
    for text in texts:
        assert 10 <= len(text.split()) <= 40, f"{len(text.split())} words: {text}"
        assert text.endswith(".") and "  " not in text, text


def main(path: Path = STREAM) -> Path:
    records = build_stream()
    check(records)
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    counts = Counter((r["topic"], r["sentiment"]) for r in records)
    print(f"wrote {len(records)} documents ({path.stat().st_size:,} bytes) to {path}")
    for topic in TOPICS:
        print(f"  {topic:9s}", ", ".join(f"{s} {counts[topic, s]}" for s in SENTIMENTS))
    return path


if __name__ == "__main__":
    main()
