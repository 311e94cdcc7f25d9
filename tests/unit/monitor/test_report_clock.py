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


def test_an_early_report_does_not_shorten_the_silence_an_agent_is_allowed() -> None:
    """An agent reporting every 60 s sent one at once when a source began failing: taken as its
    interval, the 1.5 s gap cut the no-data limit from 180 s to 30 s, and "no data" fired before
    its next regular report (the review's reproduction: reports at 0, 60, 120, early at 121.5)."""
    clock = ReportClock()
    for at in (0.0, 60.0, 120.0):
        clock.reported("web-1", at, ["cpu"])
    clock.reported("web-1", 121.5, ["cpu"], early=True)
    assert not clock.observe("web-1", up=True, now=160.0, interval_s=10.0).bad
    assert clock.limit_s("web-1", 10.0) == 180.0
    clock.reported("web-1", 180.0, ["cpu"])  # the regular one, on its time
    assert clock.limit_s("web-1", 10.0) == 180.0


def test_an_outage_is_not_taken_for_the_gap_between_reports() -> None:
    """The first regular report after a link outage measured its gap from the last one before
    it: the silence allowed became three outages long."""
    clock = ReportClock()
    for at in (0.0, 10.0, 20.0):
        clock.reported("web-1", at, ["cpu"])
    clock.observe("web-1", up=False, now=500.0, interval_s=10.0)  # the link went down
    clock.reported("web-1", 1000.0, ["cpu"])  # back, an hour of outage later
    assert clock.limit_s("web-1", 10.0) == 30.0
