"""The adversarial suite: on every evaluation task of the shipped task set, graded on real forks of its task
world, every hostile answer (hedged, repeated, stuffed, claimed, junk, constant; drawn from the task set itself)
earns nothing it did not earn: without tool calls no more than an empty answer, on top of the oracle's tool calls
no more than the oracle's own answer, and it never passes. Answer keys vary across each family's instances, and
legitimate variety in how an answer is written still passes."""

import dataclasses
import datetime as dt
import re
from collections import Counter, defaultdict
from decimal import Decimal

import pytest

from corecraft.episode.types import Trajectory
from corecraft.judge.grader import grade_deterministic
from corecraft.tasks.hostile import KINDS, family_pools, gained, hostile_answers
from corecraft.tasks.model import Criterion, Task
from corecraft.tasks.store import load_task_set
from corecraft.tasks.verify import grade_hostile, replay, try_hostile

# Criteria that read values out of the answer: what hedging, repetition and stuffing aim at.
VALUE_CHECKS = ("answer_line", "answer_line_set", "states_value")


@pytest.fixture(scope="module")
def shipped():
    task_set = load_task_set()
    return task_set, task_set.world()


@pytest.fixture(scope="module")
def graded(shipped):
    """Every eval task's hostile answers, graded once for the whole module: {task id: (task, HostileGrades)}."""
    task_set, world = shipped
    pools = family_pools(task_set.tasks)  # a policy sees the whole family's ground truth over training
    out = {}
    for task in task_set.tasks:
        if task.split == "eval":
            out[task.id] = (task, grade_hostile(world, task, hostile_answers(task, pools[task.family])))
    return out


def test_every_family_and_eval_task_is_attacked_with_every_kind(shipped, graded):
    task_set, _ = shipped
    assert len(graded) == sum(t.split == "eval" for t in task_set.tasks) >= 250
    assert {t.family for t, _ in graded.values()} == {t.family for t in task_set.tasks}
    for task, g in graded.values():
        kinds = {a.kind for a in g.answers}
        has_lines = any(c.check in ("answer_line", "answer_line_set") for c in task.criteria)
        assert kinds == (set(KINDS) if has_lines else {"hedge", "stuff", "claims"}), task.id
        # The attack carries the right value (hedges and stuffing are worthless only if the judge sees through
        # them, not because the value is missing).
        if has_lines:
            hedge = next(a.text for a in g.answers if a.kind == "hedge")
            first = next(c for c in task.criteria if c.check == "answer_line")
            key = first.params["key"]
            assert re.search(rf"^{re.escape(key)}: ", hedge, re.M), task.id


def test_without_tool_calls_no_hostile_answer_beats_an_empty_answer(graded):
    gains = [(task.id, a.name, task.criteria[i].id)
             for task, g in graded.values() for a, got in zip(g.answers, g.no_calls, strict=True)
             for i in gained(g.empty_no_calls, got)]
    assert gains == []


def test_on_the_oracles_calls_no_hostile_answer_beats_the_oracle_or_passes(graded):
    assert all(all(g.oracle) for _, g in graded.values())  # the honest baseline passes
    beat = [(task.id, a.name) for task, g in graded.values() for a, got in zip(g.answers, g.with_calls, strict=True)
            if gained(g.oracle, got)]
    passed = [(task.id, a.name) for task, g in graded.values() for a, got in zip(g.answers, g.with_calls, strict=True)
              if all(got) and not a.all_true]
    assert beat == [] and passed == []


def test_hedged_repeated_stuffed_and_junk_answers_earn_no_value_criterion(graded):
    """Stronger than the targets: after the oracle's own tool calls (every fact seen), these answers satisfy no
    criterion that reads a value which an empty answer does not satisfy either."""
    gains = []
    for task, g in graded.values():
        value = [i for i, c in enumerate(task.criteria) if c.check in VALUE_CHECKS]
        for a, got in zip(g.answers, g.with_calls, strict=True):
            # (The right value twice is not a rival: the prose criteria may read it.)
            if a.kind in ("hedge", "repeat", "stuff", "junk") and a.name != "repeat/right-twice":
                gains += [(task.id, a.name, task.criteria[i].id) for i in gained(g.empty_with_calls, got)
                          if i in value]
    assert gains == []


def test_verify_s_verdict_agrees(shipped, graded):
    """`corecraft tasks verify` reports the same verdict (its own grading path) on a sample of tasks."""
    task_set, world = shipped
    pools = family_pools(task_set.tasks)
    for task, _ in list(graded.values())[::25]:
        outcome = try_hostile(world, task, hostile_answers(task, pools[task.family]))
        assert outcome.gains == () and outcome.passes == (), task.id
        assert outcome.best_with_calls < 1.0


def _strip(task: Task, *, key: str) -> Task:
    """The task with every criterion's ``key`` parameter removed (a loosened rubric)."""
    crit = tuple(Criterion(c.id, c.kind, c.axis, c.text, c.check, {k: v for k, v in c.params.items() if k != key})
                 for c in task.criteria)
    return dataclasses.replace(task, criteria=crit)


def test_the_suite_catches_a_loosened_rubric(shipped):
    """The assertions above can fail: without the grounding requirement a lucky constant gains without any tool
    call, and without its rivals a 'Tier:' line that names two tiers passes on the oracle's calls."""
    task_set, world = shipped
    pools = family_pools(task_set.tasks)
    task = next(t for t in task_set.tasks if t.split == "eval" and t.family == "return_eligibility_check")
    loose = _strip(task, key="evidence")
    g = grade_hostile(world, loose, hostile_answers(loose, pools[loose.family]))
    assert any(gained(g.empty_no_calls, got) for got in g.no_calls)
    g = grade_hostile(world, task, hostile_answers(task, pools[task.family]))
    assert not any(gained(g.empty_no_calls, got) for got in g.no_calls)

    task = next(t for t in task_set.tasks if t.split == "eval" and t.family == "return_window_by_tier")
    tier = next(c for c in task.criteria if c.params.get("key") == "Tier")
    other = tier.params["rivals"][0]
    hedged = re.sub(r"^Tier: (.*)$", rf"Tier: \1 {other}", task.oracle.response, flags=re.M)
    with world.fork() as fork:
        seen = replay(fork.conn, task.oracle.tool_calls, "").tool_calls
        assert not grade_deterministic(task, fork.conn, Trajectory(seen, hedged)).passed
        assert grade_deterministic(_strip(task, key="rivals"), fork.conn, Trajectory(seen, hedged)).passed


def test_no_answer_key_is_constant_across_a_family(shipped):
    """A policy must not be able to learn an answer instead of the skill: per family, every answer key takes at
    least two values and none in more than 75% of the instances that ask for it."""
    task_set, _ = shipped
    values: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for t in task_set.tasks:
        for c in t.criteria:
            if c.check == "answer_line":
                values[t.family, c.params["key"]][repr(c.params["value"])] += 1
            elif c.check == "answer_line_set":
                values[t.family, c.params["key"]][repr(sorted(c.params["values"]))] += 1
    assert len(values) >= 50
    bad = {k: cnt.most_common(2) for k, cnt in values.items()
           if len(cnt) < 2 or cnt.most_common(1)[0][1] > 0.75 * sum(cnt.values())}
    assert bad == {}
    # Yes/no keys go both ways in fair proportion.
    for (fam, key), cnt in values.items():
        if set(cnt) == {"True", "False"}:
            assert min(cnt.values()) >= 0.25 * sum(cnt.values()), (fam, key, cnt)


def _restyle(text: str) -> str:
    """The same answer as another careful agent would write it: amounts as '1234.56 USD', dates as 'March 4,
    2026', yes/no with a full stop and a reason, ids in lower case, and a paragraph of explanation first."""
    def money(m: re.Match) -> str:
        return f"{Decimal(m.group(1).replace(',', '')):.2f} USD"

    def date(m: re.Match) -> str:
        d = dt.date.fromisoformat(m.group(0))
        return f"{d:%B} {d.day}, {d.year}"

    text = re.sub(r"\$([\d,]+\.\d\d)", money, text)
    text = re.sub(r"(?<![\d-])\d{4}-\d{2}-\d{2}(?![\d-])", date, text)
    text = re.sub(r"^([\w ]+): (yes|no)$", lambda m: f"{m.group(1)}: {m.group(2).title()}, as the records show.",
                  text, flags=re.M)
    text = re.sub(r"\b(ORD|CUST|SHP|PRD)-(\d+)\b", lambda m: f"{m.group(1).lower()}-{m.group(2)}", text)
    return "I checked the records before answering; here is what they show.\n\n" + text


def test_legitimate_variety_still_passes(shipped, graded):
    """Every eval oracle, restyled (money, date, yes/no and id spellings, prose before the answer lines), still
    passes on its tool calls."""
    _, world = shipped
    failed = []
    for task, _ in graded.values():
        restyled = _restyle(task.oracle.response)
        assert restyled != task.oracle.response
        with world.fork() as fork:
            seen = replay(fork.conn, task.oracle.tool_calls, "").tool_calls
            score = grade_deterministic(task, fork.conn, Trajectory(seen, restyled))
        if not score.passed:
            failed.append((task.id, [v.evidence for v in score.verdicts if not v.satisfied]))
    assert failed == []
