"""Batched prompt optimisation: each prompt of a batch moves as it would alone, and leaves when it stops."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from advprompts.config.presets import load_config
from advprompts.data import resolve_dataset
from advprompts.losses import LossInputs, LossResources, LossTerm, register_loss
from advprompts.optim.batch import batch_size, train_step
from advprompts.optim.job import PromptRun, RunContext, jobs_of
from advprompts.optim.log import OptimLog
from advprompts.optim.loop import build_losses, optimize
from advprompts.sampler import Sampler
from advprompts.tasks.models import load_task_model


@register_loss("test_stop_prompt")
class _StopPrompt(LossTerm):
    """The images' mean; asks to stop once prompt ``key`` has run step ``at``."""

    def __init__(self, key: str = "s0", at: int = 1):
        self.key, self.at, self.stop = key, at, False

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        self.stop = inputs.prompt.prefix.endswith(f"-{self.key}") and inputs.step >= self.at
        return inputs.images.mean()

    def should_stop(self) -> bool:
        return self.stop


def _task():
    torch.manual_seed(0)
    return load_task_model("small_cnn", 2)


def _first_step_grads(config, comps, out, keys: list[list[str]]) -> dict[str, torch.Tensor]:
    """Each group of prompt keys takes its first step together; the gradient each prompt got."""
    comps = copy.deepcopy(comps)
    dataset = resolve_dataset(config.data.source, image_size=16)
    losses = build_losses(config)
    losses.setup(LossResources(components=comps, task_model=_task().eval().requires_grad_(False),
                               device=torch.device("cpu")))
    jobs = {job.key: job for job in jobs_of(config, dataset)}
    grads = {}
    for n, group in enumerate(keys):
        folder = out / f"g{n}"
        folder.mkdir(parents=True)
        ctx = RunContext(config, comps, Sampler(comps), losses, dataset, torch.device("cpu"), folder,
                         OptimLog(folder, losses.labels, False, None))
        runs = [PromptRun(ctx, jobs[key]) for key in group]
        train_step(ctx, runs)
        grads.update({run.job.key: run.prompt.embeddings.grad.clone() for run in runs})
    return grads


def test_first_step_gradients_match_one_prompt_at_a_time(tiny, tmp_path):
    # GAP on inpainting with CFG: the adversarial term (through the sampler), text and image guidance.
    config = load_config("tiny-gap", ["prompt.seeds=[0, 1]", "losses.0.warmup=0", "log.grad_norm_every=2"])
    keys = [job.key for job in jobs_of(config, resolve_dataset(config.data.source, image_size=16))]
    assert len(keys) == 4
    alone = _first_step_grads(config, tiny, tmp_path / "alone", [[k] for k in keys])
    together = _first_step_grads(config, tiny, tmp_path / "together", [keys])
    for key in keys:
        assert alone[key].abs().sum() > 0
        torch.testing.assert_close(together[key], alone[key], rtol=1e-5, atol=1e-5)


def test_a_batched_step_with_term_norms_runs_the_networks_as_often_as_one_prompt(tiny, tmp_path):
    # With gradient checkpointing every backward pass through the sampler calls the UNet again. Logging each
    # term's gradient norm takes one backward pass per term for the whole batch, not one per prompt and term.
    config = load_config("tiny-gap", ["prompt.seeds=[0, 1]", "losses.0.warmup=0", "log.grad_norm_every=1"])
    comps = copy.deepcopy(tiny)
    calls = []
    forward = comps.unet.forward
    comps.unet.forward = lambda *a, **k: (calls.append(len(a[0])), forward(*a, **k))[1]
    dataset = resolve_dataset(config.data.source, image_size=16)
    losses = build_losses(config)
    losses.setup(LossResources(components=comps, task_model=_task().eval().requires_grad_(False),
                               device=torch.device("cpu")))
    jobs = jobs_of(config, dataset)
    counts = []
    for n, group in enumerate([jobs[:1], jobs]):
        folder = tmp_path / f"g{n}"
        folder.mkdir()
        ctx = RunContext(config, comps, Sampler(comps, gradient_checkpointing=True), losses, dataset,
                         torch.device("cpu"), folder, OptimLog(folder, losses.labels, False, None))
        calls.clear()
        train_step(ctx, [PromptRun(ctx, job) for job in group])
        counts.append(len(calls))
    assert len(jobs) == 4 and counts[0] > config.sampler.num_steps  # the backward passes recompute the UNet
    assert counts[1] == counts[0]


def test_a_stopped_prompt_leaves_the_batch_and_the_next_joins(tiny, tmp_path):
    stop = "losses=[{name: test_stop_prompt, params: {key: s0, at: 1}}]"
    config = load_config("tiny-ap", ["prompt.seeds=[0, 1, 2]", "optim.steps=4", "log.tensorboard=false",
                                     "log.sample_every=0", stop])
    calls, results = [], {}
    for batch in (None, 2):
        seen = []
        res = optimize(config, tmp_path / f"b{batch}", components=copy.deepcopy(tiny), task_model=_task(),
                       on_step=lambda key, step, values: seen.append((key, step)), prompt_batch=batch)
        calls.append(seen)
        results[batch] = res
    alone, together = calls
    assert alone == [("s0", 0), ("s0", 1), *[("s1", i) for i in range(4)], *[("s2", i) for i in range(4)]]
    # s0 runs its first step alone (memory probe), then with s1; it stops after step 1 and s2 takes its place.
    assert together == [("s0", 0), ("s0", 1), ("s1", 0), ("s1", 1), ("s2", 0), ("s1", 2), ("s2", 1),
                        ("s1", 3), ("s2", 2), ("s2", 3)]
    for a, b in zip(results[None].prompts, results[2].prompts):
        assert (a.key, a.steps, a.stopped_early) == (b.key, b.steps, b.stopped_early)
        torch.testing.assert_close(load_file(b.file), load_file(a.file), rtol=1e-5, atol=1e-5)
    logs = [(tmp_path / f"b{b}" / "log.csv").read_text().splitlines() for b in (None, 2)]
    assert [row.split(",")[:2] for row in logs[0]] == [row.split(",")[:2] for row in logs[1]]  # same rows, same order


def test_batch_size_is_capped_by_free_memory(monkeypatch):
    import advprompts.optim.batch as batch

    monkeypatch.setattr(batch, "free_memory", lambda device: 10_000)
    assert batch_size(8, 1_000, torch.device("cpu")) == 8
    assert batch_size(8, 3_000, torch.device("cpu")) == 2   # 80% of 10 kB holds two 3 kB steps
    assert batch_size(8, 50_000, torch.device("cpu")) == 1  # never below one prompt
    assert batch_size(8, 0, torch.device("cpu")) == 8       # nothing measured: as asked


def _group_configs(extra=()):
    """Two tiny GAP runs that differ only in their guidance images and prefix, like two target groups."""
    return [load_config("tiny-gap", ["log.grad_norm_every=2", f"prompt.prefix={prefix}",
                                     f"losses.2.params.target_images={images}", *extra])
            for prefix, images in (("g-a", "tiny-synth:target"), ("g-b", "tiny-synth:train"))]


def test_runs_optimised_together_write_what_each_writes_alone(tiny, tmp_path, caplog):
    from advprompts.optim.loop import optimize_together

    configs = _group_configs()
    alone = [optimize(c, tmp_path / "alone" / c.prompt.prefix, components=copy.deepcopy(tiny)) for c in configs]
    with caplog.at_level("INFO", logger="advprompts.optim.batch"):
        together = optimize_together([(c, tmp_path / "together" / c.prompt.prefix) for c in configs],
                                     components=copy.deepcopy(tiny), prompt_batch=8)
    assert "batching up to 8 prompts (asked for 8;" in caplog.text  # the memory probe's choice is reported
    assert [len(r.prompts) for r in together] == [2, 2]
    for a_run, b_run in zip(alone, together):
        for a, b in zip(a_run.prompts, b_run.prompts):
            assert (a.key, a.steps, a.file.name) == (b.key, b.steps, b.file.name)
            torch.testing.assert_close(load_file(b.file), load_file(a.file), rtol=1e-5, atol=1e-5)
        logs = [(r.out_dir / "log.csv").read_text().splitlines() for r in (a_run, b_run)]
        assert logs[0][0] == logs[1][0] and len(logs[0]) == len(logs[1]) == 1 + 2 * 3
    # The two runs' guidance differs, so their prompts do: each run kept its own losses in the batch.
    a, b = (load_file(r.prompts[0].file) for r in together)
    assert not torch.allclose(next(iter(a.values())), next(iter(b.values())))
    # Finished runs are found done and hand back the same prompts (a crash mid-way: the next test).
    before = [load_file(p.file) for r in together for p in r.prompts]
    again = optimize_together([(c, tmp_path / "together" / c.prompt.prefix) for c in configs], resume=True,
                              components=copy.deepcopy(tiny), prompt_batch=8)
    assert [p.file for r in again for p in r.prompts] == [p.file for r in together for p in r.prompts]
    assert [p.steps for r in again for p in r.prompts] == [3] * 4
    for old, p in zip(before, (p for r in again for p in r.prompts)):
        torch.testing.assert_close(load_file(p.file), old, rtol=0, atol=0)


def test_runs_that_differ_beyond_their_losses_are_not_optimised_together(tiny, tmp_path):
    from advprompts.errors import ConfigError
    from advprompts.optim.loop import optimize_together

    a, b = _group_configs(["optim.lr=0.01"])[0], _group_configs()[1]
    with pytest.raises(ConfigError, match=r"'g-b' differs in optim\.lr;"):
        optimize_together([(a, tmp_path / "a"), (b, tmp_path / "b")], components=copy.deepcopy(tiny))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_runs_optimised_together_resume_after_a_crash(tiny, tmp_path, monkeypatch):
    from advprompts.optim.loop import optimize_together

    configs = _group_configs(["optim.steps=4", "log.checkpoint_every=2"])  # 2 runs x 2 prompts x 4 steps
    whole = optimize_together([(c, tmp_path / "whole" / c.prompt.prefix) for c in configs],
                              components=copy.deepcopy(tiny), prompt_batch=8)
    finish, calls = PromptRun.finish_step, []

    def counted(self, *a, **k):
        calls.append(self.step)
        if crash and len(calls) == 10:  # past every prompt's step-2 checkpoint, mid-way through a batched step
            raise KeyboardInterrupt
        return finish(self, *a, **k)

    monkeypatch.setattr(PromptRun, "finish_step", counted)
    runs, crash = [(c, tmp_path / "cut" / c.prompt.prefix) for c in configs], True
    with pytest.raises(KeyboardInterrupt):
        optimize_together(runs, components=copy.deepcopy(tiny), prompt_batch=8)
    calls.clear()
    crash = False
    resumed = optimize_together(runs, resume=True, components=copy.deepcopy(tiny), prompt_batch=8)
    assert sorted(calls) == [2] * 4 + [3] * 4  # only the steps after the checkpoints run again
    for a_run, b_run in zip(whole, resumed):
        for a, b in zip(a_run.prompts, b_run.prompts):
            torch.testing.assert_close(load_file(b.file), load_file(a.file), rtol=1e-6, atol=1e-6)
        logs = [(r.out_dir / "log.csv").read_text().splitlines() for r in (a_run, b_run)]
        assert [row.split(",")[:2] for row in logs[0]] == [row.split(",")[:2] for row in logs[1]]  # no row lost or twice


def _count_rollouts(monkeypatch) -> list[tuple[int, bool]]:
    """(number of rollouts, with gradient) of every ``Sampler.rollouts`` call from now on."""
    seen, rollouts = [], Sampler.rollouts
    monkeypatch.setattr(Sampler, "rollouts", lambda self, calls, grad=True: (seen.append((len(calls), grad)),
                                                                            rollouts(self, calls, grad))[1])
    return seen


def _text_guided(extra=()):
    text = "{name: text_l2, weight: 0.1, params: {descriptions: [on green grass, in the snow], renormalize: true}}"
    return load_config("tiny-ap", ["prompt.seeds=[0, 1, 2]", "optim.steps=4", "log.tensorboard=false",
                                   "log.sample_every=2", f"losses=[{text}]", *extra])


def test_text_guidance_alone_skips_the_rollout_and_moves_the_prompt_as_with_it(tiny, tmp_path, monkeypatch):
    from advprompts.losses.guidance import TextL2

    config = _text_guided()
    seen = _count_rollouts(monkeypatch)
    skipped = optimize(config, tmp_path / "skip", components=copy.deepcopy(tiny), task_model=_task())
    # Only the steps that save a sample grid (after steps 2 and 4) render, without gradient, one prompt each.
    assert seen == [(1, False)] * 6
    seen.clear()
    monkeypatch.setattr(TextL2, "reads_images", True)  # as before: a differentiable rollout every step
    full = optimize(config, tmp_path / "full", components=copy.deepcopy(tiny), task_model=_task())
    assert seen == [(1, True)] * 12
    for a, b in zip(full.prompts, skipped.prompts):
        assert a.steps == b.steps == 4
        torch.testing.assert_close(load_file(b.file), load_file(a.file), rtol=0, atol=0)
    rows = [[r.rsplit(",", 1)[0] for r in (tmp_path / d / "log.csv").read_text().splitlines()] for d in ("full", "skip")]
    assert rows[0] == rows[1] and len(rows[0]) == 1 + 3 * 4  # every value but the step's seconds
    grids = [sorted(p.relative_to(tmp_path / d) for p in (tmp_path / d / "samples").rglob("*.png"))
             for d in ("full", "skip")]
    assert grids[0] == grids[1] and len(grids[0]) == 6


def test_the_memory_probe_waits_for_a_step_through_the_sampler(tiny, tmp_path, monkeypatch):
    # Text guidance from the start, the adversary from step 2: steps 0-1 cost no rollout, so the batch size is
    # measured on s0's step 2, the first that goes through the sampler; then s1 and s2 join.
    config = _text_guided(["losses=[{name: opposite_ce, weight: 1.0, warmup: 2}, {name: text_l2, weight: 0.1, "
                           "params: {descriptions: [on green grass, in the snow], renormalize: true}}]"])
    results, order = {}, {}
    seen = _count_rollouts(monkeypatch)
    for batch in (None, 8):
        steps = order[batch] = []
        results[batch] = optimize(config, tmp_path / f"b{batch}", components=copy.deepcopy(tiny), task_model=_task(),
                                  on_step=lambda key, step, values: steps.append((key, step)), prompt_batch=batch)
    assert order[8][:4] == [("s0", 0), ("s0", 1), ("s0", 2), ("s0", 3)]  # s0 alone through its probe step (2)
    assert order[8][4:7] == [("s1", 0), ("s2", 0), ("s1", 1)]
    assert seen[-3:] == [(2, False), (2, True), (2, True)]  # s1, s2: a sample grid after step 1, then together
    for a, b in zip(results[None].prompts, results[8].prompts):
        torch.testing.assert_close(load_file(b.file), load_file(a.file), rtol=1e-5, atol=1e-5)
