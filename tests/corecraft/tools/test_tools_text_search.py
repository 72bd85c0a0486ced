"""Free-text search: through the world's trigram index (customers) or row by row (knowledge), the same answers as
reading every row; and the index stays equal to its table through every write."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corecraft.tools import call_tool
from corecraft.tools.common import TRIGRAM_MIN_CHARS
from corecraft.world.diff import diff_bytes
from corecraft.world.schema import TEXT_INDEXES


def ok(conn, name, args):
    result = call_tool(conn, name, args)
    assert not result.is_error, result.text
    return json.loads(result.text)


def every_match(conn, name: str, args: dict, key: str, id_key: str) -> list[str]:
    """All ids a search returns, page after page."""
    ids, page = [], 1
    while page is not None:
        data = ok(conn, name, {**args, "page": page})
        ids += [row[id_key] for row in data[key]]
        page = data["next_page"]
    return ids


def scanned_customers(conn, text: str) -> set[str]:
    """The reference: every customer whose full name, email or company holds ``text`` (ASCII case folded, as
    LIKE folds it), found by reading every row in Python."""
    needle = text.lower()
    rows = conn.execute("SELECT customer_id, first_name || ' ' || last_name, email, company_name FROM customers")
    return {cid for cid, *fields in rows if any(needle in (f or "").lower() for f in fields)}


def scanned_knowledge(conn, text: str) -> set[str]:
    needle = text.lower()
    rows = conn.execute(
        "SELECT article_id, article_id, title, body, tags FROM kb_articles WHERE status = 'published' "
        "UNION ALL SELECT policy_id, policy_id, title, body, NULL FROM company_policies WHERE status = 'active'")
    return {doc_id for doc_id, *fields in rows if any(needle in (f or "").lower() for f in fields)}


def _world_substrings(draw, sql: str, conn) -> str:
    texts = [t for (t,) in conn.execute(sql) if t]
    text = draw(st.sampled_from(texts))
    start = draw(st.integers(0, max(0, len(text) - 1)))
    length = draw(st.integers(1, 14))
    chunk = text[start:start + length] or text[:1]
    return draw(st.sampled_from([chunk, chunk.upper(), chunk.title()]))


def _one_column_shape(text: str) -> bool:
    """searchCustomers reads text shaped like an email, a customer id or a phone number in that column alone."""
    shape = text.strip()
    return "@" in shape or bool(re.fullmatch(r"(?i)cust-?\d*", shape) or re.fullmatch(r"[\d\s().+-]{4,}", shape))


# tool, result key, id key, where the searched text is drawn from, the reference, texts the reference does not cover
TEXT_SEARCHES = {
    "customers": ("searchCustomers", "customers", "customer_id",
                  "SELECT first_name || ' ' || last_name FROM customers UNION ALL SELECT email FROM customers "
                  "UNION ALL SELECT company_name FROM customers", scanned_customers, _one_column_shape),
    "knowledge": ("searchKnowledgebase", "results", "doc_id",
                  "SELECT title FROM kb_articles UNION ALL SELECT body FROM kb_articles UNION ALL "
                  "SELECT tags FROM kb_articles UNION ALL SELECT body FROM company_policies",
                  scanned_knowledge, lambda text: False),
}


@pytest.mark.parametrize("search", TEXT_SEARCHES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_text_search_equals_reading_every_row(conn, search, data):
    """Substrings of real names, emails, companies and knowledge text, in any case, short ones (no index)
    included: the search finds exactly the rows that hold them."""
    tool, key, id_key, source_sql, reference, not_covered = TEXT_SEARCHES[search]
    text = _world_substrings(data.draw, source_sql, conn)
    if not text.strip() or not_covered(text):
        return
    found = every_match(conn, tool, {"query": text}, key, id_key)
    assert len(found) == len(set(found))
    assert set(found) == reference(conn, text), text


@pytest.mark.parametrize("text", ['ann "the" o\'brien', "100%", "a_b", "NEAR(", "x OR y", "*", "^ab"])
def test_query_syntax_in_the_text_is_matched_literally(conn, text):
    """FTS5 has its own query language; the searched text must never be read as one (nor as LIKE wildcards)."""
    customer = ok(conn, "createCustomer", {"first_name": "Quinn", "last_name": f"Test {text}",
                                           "email": "quinn.test@example.com"})["customer"]["customer_id"]
    found = every_match(conn, "searchCustomers", {"query": text}, "customers", "customer_id")
    assert customer in found
    assert set(found) == scanned_customers(conn, text)


def test_indexes_follow_every_write_to_their_tables(world, conn):
    created = ok(conn, "createCustomer", {"first_name": "Zebulon", "last_name": "Quartermaine",
                                          "email": "zq@example.com", "company_name": "Xylophonics"})
    cid = created["customer"]["customer_id"]
    assert every_match(conn, "searchCustomers", {"query": "quartermaine"}, "customers", "customer_id") == [cid]
    assert every_match(conn, "searchCustomers", {"query": "xylophon"}, "customers", "customer_id") == [cid]
    ok(conn, "updateCustomer", {"customer_id": cid, "last_name": "Quill", "company_name": "Marimbatech"})
    assert every_match(conn, "searchCustomers", {"query": "quartermaine"}, "customers", "customer_id") == []
    assert every_match(conn, "searchCustomers", {"query": "Zebulon Quill"}, "customers", "customer_id") == [cid]
    assert every_match(conn, "searchCustomers", {"query": "marimba"}, "customers", "customer_id") == [cid]
    ok(conn, "updateCustomer", {"customer_id": cid, "loyalty_points_delta": 5})  # no indexed column changes
    # Writes that no tool makes (task planting, a hand edit) go through the same triggers.
    conn.execute("UPDATE customers SET first_name = 'Zeb' WHERE customer_id = ?", (cid,))
    conn.commit()  # the hand edit's implicit transaction: a diff reads committed pages
    assert every_match(conn, "searchCustomers", {"query": "Zeb Quill"}, "customers", "customer_id") == [cid]
    # A world diff reports the data tables only, not the index tables the triggers wrote.
    changed = diff_bytes(world.serialize(), conn.serialize())
    assert "customers" in changed
    assert not [t for t in changed if any(t.startswith(index) for index in TEXT_INDEXES)]
    conn.execute("DELETE FROM customers WHERE customer_id = ?", (cid,))
    assert every_match(conn, "searchCustomers", {"query": "Zebulon"}, "customers", "customer_id") == []
    # The index holds exactly what its table derives, and its own structure checks out.
    assert TEXT_INDEXES == ("customers_text",)
    indexed = conn.execute("SELECT customer_id, full_name, email, company_name FROM customers_text")
    derived = conn.execute("SELECT customer_id, first_name || ' ' || last_name, email, company_name FROM customers")
    assert set(map(tuple, indexed)) == set(map(tuple, derived))
    conn.execute("INSERT INTO customers_text (customers_text) VALUES ('integrity-check')")  # raises if corrupt


def test_short_text_is_searched_row_by_row(conn):
    text = "Le"
    assert len(text) < TRIGRAM_MIN_CHARS
    found = every_match(conn, "searchCustomers", {"query": text}, "customers", "customer_id")
    assert found and set(found) == scanned_customers(conn, text)
