"""stats.json history: bounded by thinning, never dropped wholesale (docs/contract.md section 4)."""

from trainer.hooks.stats import thin_history


def test_thinning_keeps_whole_span_and_bound():
    hist = []
    for step in range(1, 5001):
        hist.append({"step": step})
        hist = thin_history(hist, 100)
        assert len(hist) <= 100
    steps = [h["step"] for h in hist]
    assert steps[0] == 1 and steps[-1] == 5000
    assert steps == sorted(steps)
    # Old entries are thinned, not dropped wholesale: the first half of the run is still there.
    assert sum(s < 2500 for s in steps) >= 10
