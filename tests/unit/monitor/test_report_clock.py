"""ReportClock: when an agent's figures, or one of its series, stop coming; and what it keeps."""

from __future__ import annotations

from relaysync.monitor.observations import MAX_METRICS_PER_SERVER, ReportClock


def test_a_series_left_out_of_reports_is_gone_after_the_no_data_time() -> None:
    clock = ReportClock()
    clock.reported("web-1", 0.0, ["cpu", "disk"])
    for at in (10.0, 20.0, 30.0, 40.0):
        clock.reported("web-1", at, ["cpu"])
    assert not clock.series_gone("web-1", "cpu", now=40.0, interval_s=10.0)
    assert clock.series_gone("web-1", "disk", now=40.0, interval_s=10.0)


def test_an_agent_sending_ever_new_names_is_remembered_for_a_bounded_number() -> None:
    """Was: one entry per (server, name) for ever: an agent naming a new figure in each report
    grew the master without bound."""
    clock = ReportClock()
    for i in range(MAX_METRICS_PER_SERVER + 500):
        clock.reported("web-1", float(i), [f"m{i}", "cpu"])
    assert len(clock._seen["web-1"]) == MAX_METRICS_PER_SERVER
    now = float(MAX_METRICS_PER_SERVER + 499)
    assert not clock.series_gone("web-1", "cpu", now=now, interval_s=10.0)  # kept: reported last
    assert clock.series_gone("web-1", "m0", now=now, interval_s=10.0)  # dropped: gone, as before
