"""The inference benchmark's own arithmetic: interleaved timing and the INT8 ceiling."""

from types import SimpleNamespace

from benchmarks.inference import int8_floor_ms, time_interleaved


def test_int8_floor_counts_linear_layers_at_the_int8_rate_and_attention_at_the_fp32_rate():
    config = SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=2)
    # per token per layer: QKV 3*4*4 + output 4*4 + feed-forward 2*4*8 = 128 MACs; 2 layers x 10 tokens
    linear = 2 * 10 * 128
    attention = 2 * 1 * 2 * 10 * 10 * 4  # QK^T and softmax x V, every head together: 2 * tokens^2 * hidden
    floor = int8_floor_ms(config, batch=1, tokens=10, peak={"int8_gmacs": 2.0, "fp32_gmacs": 1.0})
    assert abs(floor - (linear / 2.0 + attention / 1.0) / 1e6) < 1e-12


def test_interleaved_timing_gives_every_contender_its_runs_in_rotating_order():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    figures = time_interleaved(calls, runs=6, rounds=3)
    assert set(figures) == {"a", "b", "c"} and all(f["p50_ms"] >= 0 for f in figures.values())
    timed = order[3 * 3:]  # after 3 warm-up calls each
    assert [timed[i] for i in range(0, 18, 2)][:3] == ["a", "b", "c"]
    assert timed[6:8] == ["b", "b"] and timed[12:14] == ["c", "c"], "each round starts one contender later"
