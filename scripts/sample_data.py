"""sample_data: writes data/raw/finance_alpaca.{parquet,csv}, the embedded sample (not a pipeline stage).

A deterministic finance dataset in Stanford Alpaca format: every row comes from the templates
below and a seeded random.Random, plus a few deliberate defects (missing inputs, missing/blank/
placeholder outputs, exact duplicates) for the cleaning stage. Each fact (input and answer) is
asked under one prompt only, so no test answer is a training answer under another wording.

    python scripts/sample_data.py      (or python -m scripts.sample_data), from the repo root
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune import files  # noqa: E402
from finetune.data import identity  # noqa: E402

COLUMNS = ("instruction", "input", "output")
OUT_DIR = Path(__file__).resolve().parents[1] / "data" / "raw"
# Alpaca's own filler values; not "N/A", which pandas' default CSV reader turns into NaN.
PLACEHOLDERS = ("<noinput>", "<nooutput>")

GLOSSARY = {
    "bond": "A bond is a loan an investor makes to a government or company, repaid with interest at maturity.",
    "stock": "A stock is a share of ownership in a company. Holders gain from a rising price and dividends.",
    "dividend": "A dividend is a payment a company makes to its shareholders, usually in cash, out of its profits.",
    "mutual fund": "A mutual fund pools money from many investors to buy a professionally managed portfolio.",
    "ETF": "An exchange-traded fund (ETF) is a basket of securities that trades on an exchange like a stock.",
    "index fund": "An index fund is a fund that tracks a market index, such as a broad stock index, at low cost.",
    "inflation": "Inflation is the general rise in prices over time, which reduces the purchasing power of money.",
    "interest rate": "An interest rate is the yearly cost of borrowing money, as a percentage of the amount borrowed.",
    "APR": "APR (annual percentage rate) is the yearly cost of a loan, including interest and some fees.",
    "compound interest": "Compound interest is interest earned on the principal and on interest already added to it.",
    "diversification": "Diversification is spreading money across investments so one loss does not sink the portfolio.",
    "liquidity": "Liquidity is how quickly an asset can be turned into cash without losing much value.",
    "asset": "An asset is anything of value a person or company owns, such as cash, property or investments.",
    "liability": "A liability is an amount a person or company owes, such as a loan or an unpaid bill.",
    "equity": "Equity is the value left for the owners after all liabilities are subtracted from assets.",
    "balance sheet": "A balance sheet lists a company's assets, liabilities and equity at a point in time.",
    "income statement": "An income statement shows a company's revenue, expenses and profit over a period.",
    "cash flow": "Cash flow is the money moving into and out of a business or household over a period.",
    "credit score": "A credit score summarises how reliably a person has repaid debts. Lenders use it to set terms.",
    "mortgage": "A mortgage is a loan used to buy property, with the property itself serving as collateral.",
    "collateral": "Collateral is an asset a borrower pledges, which the lender can take if the loan is not repaid.",
    "bull market": "A bull market is a period of rising prices and optimism in a financial market.",
    "bear market": "A bear market is a period of falling prices, commonly 20% or more below a recent high.",
    "capital gain": "A capital gain is the profit made when an asset is sold for more than it cost.",
    "hedge": "A hedge is an investment made to reduce the risk of losses on another investment.",
    "yield": "Yield is the income an investment pays, such as interest or dividends, as a percentage of its price.",
    "market capitalization": "Market capitalization is a company's share price times its number of shares.",
    "recession": "A recession is a broad decline in economic activity lasting months, with falling output and jobs.",
    "emergency fund": "An emergency fund is cash kept for unexpected expenses, often three to six months of costs.",
    "high-yield bond": 'A high-yield or "junk" bond pays more interest because its issuer is more likely to default.',
    "amortization": "Amortization is paying off a loan with regular payments that cover interest and principal.",
    "net worth": "Net worth is the value of everything you own minus everything you owe.",
}
DEF_ASK = (
    'Define the term "{t}".',
    'What does "{t}" mean in finance?',
    'Explain "{t}" in simple words.',
    'Give a short definition of "{t}".',
    'In personal finance, what is meant by "{t}"?',
)
COMPANY_A = (
    "Northwind",
    "Bluecrest",
    "Ironvale",
    "Silverline",
    "Oakridge",
    "Redwater",
    "Brightpath",
    "Harborview",
    "Stonegate",
    "Clearbrook",
    "Westfield",
    "Pinecrest",
    "Goldleaf",
    "Eastmoor",
    "Kestrel",
    "Summit",
)
COMPANY_B = ("Labs", "Holdings", "Systems", "Foods", "Energy", "Retail", "Logistics", "Motors")
MERCHANTS = {
    "Groceries": ("FRESHMART GROCERY #{n}", "GREENLEAF MARKET", "VALLEY FOODS SUPERMARKET"),
    "Dining": ("BLUE DOOR CAFE", "PIZZA CORNER #{n}", "SUNRISE DINER"),
    "Transportation": ("METRO TRANSIT FARE", "QUICKRIDE TRIP", "FUELSTOP GAS #{n}"),
    "Utilities": ("CITY WATER DEPT", "BRIGHTGRID ELECTRIC", "FASTLINK INTERNET"),
    "Housing": ("OAKWOOD APTS RENT", "HOMEGUARD MORTGAGE PMT"),
    "Entertainment": ("STREAMBOX SUBSCRIPTION", "CINEPLEX TICKETS #{n}", "ARCADIA GAMES"),
    "Healthcare": ("CARELINE PHARMACY #{n}", "NORTHSIDE DENTAL", "CITY CLINIC COPAY"),
    "Travel": ("SKYWAY AIRLINES", "HARBOR INN HOTEL", "ROADTRIP CAR RENTAL"),
    "Shopping": ("MEGAMART ONLINE", "URBAN THREADS CLOTHING", "GADGET HUB #{n}"),
}
HEADLINES = {
    "positive": (
        "{c} shares jump {k}% after record quarterly profit",
        "{c} raises full-year outlook on strong demand",
        "{c} beats revenue estimates and announces share buyback",
    ),
    "negative": (
        "{c} shares slide {k}% after profit warning",
        "{c} cuts dividend amid falling sales",
        "{c} misses earnings forecasts as costs rise",
    ),
    "neutral": (
        "{c} to report quarterly results on {d}",
        "{c} appoints new chief financial officer",
        "{c} shares little changed ahead of central bank decision",
    ),
}


def usd(x: float) -> str:
    return f"{'-' if x < 0 else ''}${abs(x):,.2f}"


def big(millions: int) -> str:
    return f"${millions / 1000:.1f} billion" if millions >= 1000 else f"${millions} million"


def company(r: random.Random) -> str:
    return f"{r.choice(COMPANY_A)} {r.choice(COMPANY_B)}"


def rate(r: random.Random, lo: float, hi: float, step: float = 0.25) -> float:
    return round(lo + step * r.randint(0, round((hi - lo) / step)), 2)


def loan(r: random.Random) -> tuple[int, float, int, float]:
    p, apr, years = r.randrange(5000, 400001, 1000), rate(r, 2.5, 12), r.choice((3, 5, 10, 15, 20, 30))
    i, n = apr / 1200, years * 12
    return p, apr, years, p * i * (1 + i) ** n / ((1 + i) ** n - 1)


def t_compound(r):
    p, y, n = r.randrange(1000, 50001, 500), rate(r, 1, 12), r.randint(2, 30)
    return (
        f"Calculate the future value of {usd(p)} invested at {y:g}% compounded annually for {n} years.",
        "",
        f"FV = P x (1 + r)^n = {usd(p)} x (1 + {y / 100:g})^{n} = {usd(p * (1 + y / 100) ** n)}.",
    )


def t_simple(r):
    p, y, n = r.randrange(500, 50001, 250), rate(r, 1, 10), r.randint(1, 15)
    return (
        f"How much simple interest does {usd(p)} earn at {y:g}% per year over {n} years?",
        "",
        f"Simple interest = P x r x t = {usd(p)} x {y / 100:g} x {n} = {usd(p * y / 100 * n)}.",
    )


def t_payment(r):
    p, apr, years, m = loan(r)
    return (
        f"What is the monthly payment on a {usd(p)} loan at {apr:g}% APR over {years} years?",
        "",
        f"With r = {apr:g}%/12 per month and n = {years * 12} payments, "
        f"M = P x r(1 + r)^n / ((1 + r)^n - 1) = {usd(m)} per month.",
    )


def t_breakdown(r):
    p, apr, years, m = loan(r)
    total = round(m, 2) * years * 12  # totals follow from the rounded payment, as a borrower would pay it
    return (
        f"Break down the total cost of a {years}-year loan of {usd(p)} at {apr:g}% APR.",
        "",
        f"Monthly payment: {usd(m)}\nTotal paid: {usd(total)}\nTotal interest: {usd(total - p)}",
    )


def t_change(r):
    old = r.randrange(500, 50001) / 100
    new = round(old * (1 + r.uniform(-0.5, 0.8)), 2)
    ch = (new - old) / old * 100
    return (
        f"A stock moved from {usd(old)} to {usd(new)}. What is the percentage change?",
        "",
        f"Percentage change = (new - old) / old x 100 = ({usd(new)} - {usd(old)}) / {usd(old)} x 100 = {ch:+.2f}%.",
    )


def t_roi(r):
    cost = r.randrange(1000, 100001, 100)
    value = round(cost * r.uniform(0.6, 2.2), -1)
    return (
        f"An investment cost {usd(cost)} and is now worth {usd(value)}. What is the ROI?",
        "",
        f"ROI = (current value - cost) / cost x 100 = ({usd(value)} - {usd(cost)}) / {usd(cost)} x 100 "
        f"= {(value - cost) / cost * 100:.2f}%.",
    )


def t_monthly(r):
    apr = rate(r, 1, 36)
    ask = r.choice(("Convert an APR of {a}% to a monthly interest rate.", "What monthly rate corresponds to {a}% APR?"))
    return ask.format(a=f"{apr:g}"), "", f"Monthly rate = APR / 12 = {apr:g}% / 12 = {apr / 12:.4f}%."


def t_breakeven(r):
    fixed, price = r.randrange(5000, 200001, 500), r.randrange(1000, 50001) / 100
    var = round(price * r.uniform(0.2, 0.85), 2)
    units = fixed / (price - var)
    return (
        f"Fixed costs are {usd(fixed)}, the price is {usd(price)} per unit and the variable cost is "
        f"{usd(var)} per unit. How many units are needed to break even?",
        "",
        f"Break-even units = fixed costs / (price - variable cost) = {usd(fixed)} / ({usd(price)} - {usd(var)}) "
        f"= {units:,.2f}, so {math.ceil(round(units, 6)):,} units.",
    )


def t_rule72(r):
    y = rate(r, 1, 24, 0.5)
    return (
        f"Using the rule of 72, about how long does it take money to double at {y:g}% per year?",
        "",
        f"Years to double = 72 / {y:g} = about {72 / y:.1f} years.",
    )


def t_cagr(r):
    a, n = r.randrange(1000, 100001, 500), r.randint(2, 20)
    b = round(a * r.uniform(0.7, 4.0), -1)
    cagr = ((b / a) ** (1 / n) - 1) * 100
    return (
        f"An investment grew from {usd(a)} to {usd(b)} over {n} years. What is its CAGR?",
        "",
        f"CAGR = (end / start)^(1/n) - 1 = ({usd(b)} / {usd(a)})^(1/{n}) - 1 = {cagr:.2f}%.",
    )


def t_yield(r):
    p = r.randrange(1000, 40001) / 100
    d = round(p * r.uniform(0.005, 0.08), 2)
    return (
        f"A stock trades at {usd(p)} and pays an annual dividend of {usd(d)} per share. What is its yield?",
        "",
        f"Dividend yield = annual dividend / price x 100 = {usd(d)} / {usd(p)} x 100 = {d / p * 100:.2f}%.",
    )


def t_budget(r):
    x = r.randrange(2000, 15001, 50)
    return (
        f"Split a monthly after-tax income of {usd(x)} using the 50/30/20 rule.",
        "",
        f"Needs (50%): {usd(x * 0.5)}, wants (30%): {usd(x * 0.3)}, savings (20%): {usd(x * 0.2)}.",
    )


def t_define(r):
    term = r.choice(list(GLOSSARY))
    return r.choice(DEF_ASK).format(t=term), "", GLOSSARY[term]


def t_margin(r):
    rev = r.randrange(100_000, 20_000_001, 5000)
    ni = round(rev * r.uniform(-0.1, 0.3), -2)
    return (
        "Calculate the net profit margin from the figures below.",
        f"Revenue: {usd(rev)}; net income: {usd(ni)}",
        f"Net profit margin = net income / revenue x 100 = {usd(ni)} / {usd(rev)} x 100 = {ni / rev * 100:.2f}%.",
    )


def t_pe(r):
    p, eps = r.randrange(500, 50001) / 100, r.randrange(10, 2001) / 100
    return (
        "Compute the price-to-earnings (P/E) ratio.",
        f"Share price: {usd(p)}; earnings per share: {usd(eps)}",
        f"P/E = share price / EPS = {usd(p)} / {usd(eps)} = {p / eps:.2f}.",
    )


def t_current(r):
    a, li = r.randrange(50_000, 5_000_001, 1000), r.randrange(50_000, 4_000_001, 1000)
    cr = a / li
    verdict = "current assets cover current liabilities" if cr >= 1 else "current liabilities exceed current assets"
    return (
        "Calculate the current ratio and explain it.",
        f"Current assets: {usd(a)}; current liabilities: {usd(li)}",
        f"Current ratio = current assets / current liabilities = {usd(a)} / {usd(li)} = {cr:.2f}, so {verdict}.",
    )


def t_classify(r):
    cat = r.choice(list(MERCHANTS))
    merchant = r.choice(MERCHANTS[cat]).format(n=r.randint(100, 9999))
    text = (
        f"{r.choice(('POS PURCHASE', 'DEBIT CARD', 'CARD PAYMENT', 'ACH DEBIT'))} {merchant} "
        f"{r.randint(1, 12):02d}/{r.randint(1, 28):02d} {usd(r.randrange(150, 250001) / 100)}"
    )
    return (
        r.choice(
            (
                "Classify this bank transaction into a spending category.",
                "Which budget category does this transaction belong to?",
            )
        ),
        text,
        f"Category: {cat}.",
    )


def t_sentiment(r):
    label = r.choice(list(HEADLINES))
    head = r.choice(HEADLINES[label]).format(
        c=company(r), k=r.randint(2, 25), d=r.choice(("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"))
    )
    return ("Classify the sentiment of this financial headline as positive, negative, or neutral.", head, label)


def t_earnings(r):
    c, q = company(r), r.choice(("first", "second", "third", "fourth"))
    rev, g = r.randrange(120, 9000), r.choice([k for k in range(-15, 31) if k])
    ni = max(1, round(rev * r.uniform(0.03, 0.2)))
    prior = max(1, round(ni / r.uniform(0.6, 1.4)))
    prior += prior == ni  # keep the comparison strict so "increased"/"decreased" is always true
    eps, guide = r.randrange(10, 900) / 100, r.choice(("raised", "reaffirmed", "lowered"))
    owner = c + ("'" if c.endswith("s") else "'s")
    text = (
        f"{c} reported {q}-quarter revenue of {big(rev)}, {'up' if g > 0 else 'down'} {abs(g)}% year over year. "
        f"Net income was {big(ni)}, or {usd(eps)} per share, compared with {big(prior)} a year earlier. "
        f"The company {guide} its full-year outlook."
    )
    return (
        "Summarize this earnings report in one sentence.",
        text,
        f"{owner} {q}-quarter revenue {'rose' if g > 0 else 'fell'} {abs(g)}% to {big(rev)}, net income "
        f"{'increased' if ni > prior else 'decreased'} to {big(ni)} from {big(prior)}, and it {guide} its outlook.",
    )


# (template, weight): weights put about 45% of rows on templates with a non-empty input.
TEMPLATES = (
    (t_compound, 7),
    (t_simple, 5),
    (t_payment, 6),
    (t_breakdown, 2),
    (t_change, 5),
    (t_roi, 5),
    (t_monthly, 4),
    (t_breakeven, 4),
    (t_rule72, 3),
    (t_cagr, 4),
    (t_yield, 4),
    (t_budget, 3),
    (t_define, 7),
    (t_margin, 6),
    (t_pe, 6),
    (t_current, 5),
    (t_classify, 11),
    (t_earnings, 9),
    (t_sentiment, 11),
)


def generate_records(n_rows: int = 1200, seed: int = 0) -> list[dict]:
    """n_rows Alpaca records (instruction/input/output), clean rows plus seeded deliberate defects."""
    r = random.Random(seed)
    n_dup, n_none_in, n_none_out = round(n_rows * 0.01), round(n_rows * 0.05), round(n_rows * 0.01)
    n_blank, n_ph = round(n_rows * 0.005), (len(PLACEHOLDERS) if n_rows >= 100 else 0)
    funcs, weights = zip(*TEMPLATES)
    base: list[dict] = []
    seen: set = set()
    for _ in range(100 * n_rows + 1):
        if len(base) == n_rows - n_dup:
            break
        rec = dict(zip(COLUMNS, r.choices(funcs, weights)[0](r)))
        # Unique prompts (as prepare compares them), so the only duplicates and same-prompt conflicts
        # are the planted ones; unique facts, so no answer comes back under another wording.
        keys = (identity.prompt_identity(rec["instruction"], rec["input"]), fact_of(rec))
        if not seen.intersection(keys):
            seen.update(keys)
            base.append(rec)
    if len(base) < n_rows - n_dup:
        raise ValueError(f"could not generate {n_rows} distinct rows")
    # Defects go to disjoint rows; a missing input replaces an empty one, as in Alpaca exports.
    empty = [i for i, rec in enumerate(base) if rec["input"] == ""]
    none_in = set(r.sample(empty, min(n_none_in, len(empty))))
    picks = r.sample([i for i in range(len(base)) if i not in none_in], n_none_out + n_blank + n_ph)
    for i in none_in:
        base[i]["input"] = None
    for k, i in enumerate(picks):
        if k < n_none_out:
            base[i]["output"] = None
        elif k < n_none_out + n_blank:
            base[i]["output"] = r.choice(("   ", " ", "\t"))  # never "": CSV can't tell it from missing
        else:
            base[i]["output"] = PLACEHOLDERS[k - n_none_out - n_blank]
    clean = sorted(set(range(len(base))) - none_in - set(picks))
    rows = list(base)
    for i in r.sample(clean, n_dup):
        pos = rows.index(base[i])  # prompts are unique, so this finds the original
        rows.insert(r.randint(pos + 1, len(rows)), dict(base[i]))
    return rows


def fact_of(rec: dict) -> tuple:
    """What a row teaches: its input and its answer (the same pair under two wordings is one fact)."""
    return ("fact", rec["input"], rec["output"])


def write_sample(out_dir: Path, n_rows: int = 1200, seed: int = 0) -> tuple[Path, Path]:
    """Write finance_alpaca.parquet and finance_alpaca.csv (same rows, same order); return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = generate_records(n_rows, seed)
    table = pa.table({c: pa.array([rec[c] for rec in records], type=pa.string()) for c in COLUMNS})
    frame = pd.DataFrame({c: pd.Series([rec[c] for rec in records], dtype=object) for c in COLUMNS})
    parquet_path, csv_path = out_dir / "finance_alpaca.parquet", out_dir / "finance_alpaca.csv"
    with files.atomic_path(parquet_path) as tmp:
        pq.write_table(table, tmp)
    with files.atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    return parquet_path, csv_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the embedded sample, finance_alpaca.{parquet,csv}.")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory (default: the repo's data/raw)")
    args = parser.parse_args(argv)
    parquet_path, csv_path = write_sample(args.out)
    print(f"sample_data: wrote {parquet_path} and {csv_path} ({len(pd.read_parquet(parquet_path))} rows)")


if __name__ == "__main__":
    main()
