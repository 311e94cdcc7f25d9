"""The public surface: `relaysync.__all__` is sorted and every name in it exists."""

import relaysync


def test_all_sorted_and_complete() -> None:
    assert relaysync.__all__ == sorted(relaysync.__all__)
    for name in relaysync.__all__:
        assert hasattr(relaysync, name)
