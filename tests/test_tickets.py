"""Log-stream tickets: a valid one stands for its principal and run until it expires; any
change to it, another run, or another key makes it worthless."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from flowforge.api import tickets
from flowforge.ports import Principal

KEY = b"k" * 32
RUN = "0b7a3c3e-4d1f-4b53-9f0e-2a4f3c1d5e6f"
WHO = Principal("acme", "tok-1", "member", frozenset({"etl"}))


def test_a_ticket_stands_for_its_principal_and_run_until_it_expires():
    t = tickets.issue(KEY, WHO, RUN, 60, now=1000.0)
    assert tickets.verify(KEY, t, RUN, now=1059.0) == WHO
    with pytest.raises(tickets.BadTicket, match="expired"):
        tickets.verify(KEY, t, RUN, now=1061.0)
    with pytest.raises(tickets.BadTicket, match="another run"):
        tickets.verify(KEY, t, "11111111-1111-1111-1111-111111111111", now=1000.0)
    with pytest.raises(tickets.BadTicket):
        tickets.verify(b"x" * 32, t, RUN, now=1000.0)
    unscoped = Principal("acme", "tok-2", "viewer")
    assert tickets.verify(KEY, tickets.issue(KEY, unscoped, RUN, 5, now=0.0), RUN, now=1.0) == unscoped


@given(st.data())
def test_any_change_to_a_ticket_is_refused(data):
    t = tickets.issue(KEY, WHO, RUN, 60, now=1000.0)
    i = data.draw(st.integers(0, len(t) - 1))
    c = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=").filter(lambda c: c != t[i]))
    changed = t[:i] + c + t[i + 1:]
    try:
        got = tickets.verify(KEY, changed, RUN, now=1000.0)
    except tickets.BadTicket:
        return
    # base64 padding bits can change without changing the bytes: then it is the same ticket.
    assert got == WHO


@given(st.text(max_size=300))
def test_garbage_is_refused_cleanly(text):
    with pytest.raises(tickets.BadTicket):
        tickets.verify(KEY, text, RUN, now=0.0)
