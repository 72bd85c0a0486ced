"""Reading values out of free text: numbers, money, percentages, dates, identifiers, answer lines.

Response criteria compare what an agent wrote with ground truth. Agents write "$1,299.99", "1299.99 USD",
"USD 1,299.99", "March 4, 2026", "04/03/2026"..., so each extractor returns every value of its kind found in
the text, normalized; a check then asks whether the expected value is among them and whether a conflicting
value (a distractor) is too. All functions are pure.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import unicodedata
from decimal import Decimal, InvalidOperation

_MONTHS = {m: i for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"], start=1)}
_MONTHS.update({name[:3]: num for name, num in list(_MONTHS.items())})
_MONTHS["sept"] = 9
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))

# A number: optional sign, digits with optional thousands separators, optional decimals. Not part of a word
# or an identifier (so "ORD-1042" or "SKU123" does not read as the number 1042 / 123).
# Units may follow directly ("305mm", "850W", "12GB"), so letters may follow but digits may not.
_NUMBER_RE = re.compile(r"(?<![\w.\-/])(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?)(?![\d_/]|\.\d|-\d|,\d)")
_MONEY_RE = re.compile(
    r"(?:(?:US)?\$|USD\s?|€|EUR\s?)\s?(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?)"
    r"|(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?)\s?(?:USD|dollars|EUR|euros?)\b",
    re.IGNORECASE,
)
_PERCENT_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s?(?:%|percent\b|per cent\b)", re.IGNORECASE)
_ISO_DATE_RE = re.compile(r"(?<!\d)(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ][\d:.]+Z?)?(?!\d)")
_US_DATE_RE = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?![\d/])")
_MDY_RE = re.compile(rf"\b({_MONTH_RE})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.IGNORECASE)
_MD_RE = re.compile(rf"\b({_MONTH_RE})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?!,?\s+\d{{4}})(?!:)", re.IGNORECASE)
_DMY_RE = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_RE})\.?,?\s+(\d{{4}})\b",
                     re.IGNORECASE)


def normalize_text(text: str) -> str:
    """Case-folded, accent-stripped, whitespace-collapsed text; markdown emphasis and code ticks removed."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"[*_`]+", "", text)
    return re.sub(r"\s+", " ", text).strip().casefold()


def to_decimal(value: str | float | int | Decimal) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    try:
        return Decimal(str(value).replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None


def extract_numbers(text: str) -> list[Decimal]:
    """Every number in the text, including those inside money and percentages, excluding identifiers."""
    text = unicodedata.normalize("NFKC", text)
    return [to_decimal(m.group(1)) for m in _NUMBER_RE.finditer(text)]


def extract_money(text: str) -> list[Decimal]:
    """Amounts written with a currency marker ($, USD, dollars, €, EUR)."""
    text = unicodedata.normalize("NFKC", text)
    return [to_decimal(m.group(1) or m.group(2)) for m in _MONEY_RE.finditer(text)]


def extract_percents(text: str) -> list[Decimal]:
    text = unicodedata.normalize("NFKC", text)
    return [to_decimal(m.group(1)) for m in _PERCENT_RE.finditer(text)]


def _date(y: int, m: int, d: int) -> dt.date | None:
    try:
        return dt.date(y, m, d)
    except ValueError:
        return None


def extract_dates(text: str, default_year: int | None = None) -> list[dt.date]:
    """ISO (2026-03-04, with or without a time), US numeric (03/04/2026), "March 4, 2026", "4 March 2026",
    and, given ``default_year``, "March 4" without a year (agents often leave the current year out).

    Numeric slashed dates are read month-first, as the company (a US retailer) writes them.
    """
    text = unicodedata.normalize("NFKC", text)
    found: list[dt.date] = []
    for m in _ISO_DATE_RE.finditer(text):
        found.append(_date(int(m.group(1)), int(m.group(2)), int(m.group(3))))
    for m in _US_DATE_RE.finditer(text):
        found.append(_date(int(m.group(3)), int(m.group(1)), int(m.group(2))))
    for m in _MDY_RE.finditer(text):
        found.append(_date(int(m.group(3)), _MONTHS[m.group(1).lower()], int(m.group(2))))
    for m in _DMY_RE.finditer(text):
        found.append(_date(int(m.group(3)), _MONTHS[m.group(2).lower()], int(m.group(1))))
    if default_year is not None:
        for m in _MD_RE.finditer(text):
            found.append(_date(default_year, _MONTHS[m.group(1).lower()], int(m.group(2))))
    return [d for d in found if d is not None]


def parse_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    dates = extract_dates(str(value))
    if not dates:
        raise ValueError(f"not a date: {value!r}")
    return dates[0]


@functools.lru_cache(maxsize=4096)
def id_pattern(identifier: str) -> re.Pattern[str]:
    """A pattern matching an identifier as a whole token, tolerant of case and of the separator style.

    "ORD-01042" also matches "ord 01042", "ORD_01042" and "ORD01042", but not "ORD-010423" or "XORD-01042".
    """
    parts = [p for p in re.split(r"[\s\-_./#]+", identifier.strip()) if p]
    if not parts:
        raise ValueError("empty identifier")
    body = r"[\s\-_./#]?".join(re.escape(p) for p in parts)
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE)


def mentions_id(text: str, identifier: str) -> bool:
    return id_pattern(identifier).search(unicodedata.normalize("NFKC", text)) is not None


ID_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2,6}[\s\-_]?\d{3,}(?![A-Za-z0-9])")


def id_tokens(text: str) -> list[str]:
    """Identifier-looking tokens ('ORD-200001', 'cust 10001', 'SHP300001'), normalized to upper case, no separator."""
    return [re.sub(r"[\s\-_]", "", t).upper() for t in ID_TOKEN_RE.findall(unicodedata.normalize("NFKC", text))]


def mentions_phrase(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive, whitespace-tolerant phrase match."""
    words = normalize_text(phrase).split()
    if not words:
        raise ValueError("empty phrase")
    body = r"\s+".join(re.escape(w) for w in words)
    return re.search(rf"(?<!\w){body}(?!\w)", normalize_text(text)) is not None


def answer_lines(text: str, key: str) -> list[str]:
    """The values of every ``KEY: value`` line in the text (case-insensitive key, markdown-tolerant).

    Tasks that need a machine-checkable answer ask for such lines; a check then requires that every line
    for the key agrees, so writing the line twice with different values gains nothing.
    """
    key_re = r"\s+".join(re.escape(w) for w in key.strip().split())
    pattern = re.compile(rf"^[\s>*\-#`_]*{key_re}[\s*_`]*[:=][\s*_`]*(.*?)[\s*_`]*$", re.IGNORECASE | re.MULTILINE)
    return [m.group(1).strip() for m in pattern.finditer(unicodedata.normalize("NFKC", text))]


# A token that carries a digit: an identifier, a tracking number, a socket, a date, an amount. An answer line
# that must give one identifier may hold no second one (a hedge such as "1Z111 / 1Z222" has two).
_DIGIT_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9](?:[A-Za-z0-9]|[\-_.](?=[A-Za-z0-9]))*")


def digit_tokens(text: str) -> list[str]:
    """Tokens with at least one digit ('ORD-200001', '1Z4412', 'AM5', '2026-03-04', '12.50'), as written."""
    return [t for t in _DIGIT_TOKEN_RE.findall(unicodedata.normalize("NFKC", text)) if any(c.isdigit() for c in t)]


def id_key(identifier: str) -> str:
    """An identifier without case or separators, for comparing spellings ('ord 01042' == 'ORD-01042')."""
    return re.sub(r"[\s\-_./#]", "", unicodedata.normalize("NFKC", identifier)).upper()


def id_shape(identifier: str) -> re.Pattern[str]:
    """Identifiers of the same kind as this one: the same letters, the same number of digits in each run, any
    separator style. 'ORD-200001' -> ORD-200417 and ord200417 match; '1Z4412...' -> other tracking numbers."""
    parts = re.findall(r"[A-Za-z]+|\d+", identifier)
    if not parts:
        raise ValueError(f"no letters or digits in identifier {identifier!r}")
    body = r"[\s\-_./#]?".join(re.escape(p) if p.isalpha() else rf"\d{{{len(p)}}}" for p in parts)
    return re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE)


def same_kind_ids(text: str, identifier: str) -> list[str]:
    """Identifiers in the text of the same kind as ``identifier`` (itself included), normalized."""
    return [id_key(m.group(0)) for m in id_shape(identifier).finditer(unicodedata.normalize("NFKC", text))]


_YES, _NO = frozenset({"yes", "true", "y"}), frozenset({"no", "false", "n"})


def polarities(text: str) -> set[bool]:
    """The yes/no answers a text gives: {True} for 'Yes, within the window', {True, False} for 'yes / no'."""
    words = re.findall(r"[a-z]+", normalize_text(text))
    return {True for w in words if w in _YES} | {False for w in words if w in _NO}


def first_polarity(text: str) -> bool | None:
    first = re.match(r"[\W_]*(\w+)", normalize_text(text))
    word = first.group(1) if first else ""
    return True if word in _YES else False if word in _NO else None


# Words that offer a second answer in the same breath ("Gold / Silver", "Gold or Silver", "maybe Gold"). Case
# matters for "or": "Portland, OR 97205" names a state.
HEDGE_RE = re.compile(r"/|\||;|\?|\b(?:[Oo]r|[Ee]ither|[Mm]aybe|[Pp]erhaps|[Pp]ossibly|[Pp]robably|[Uu]nsure)\b")
