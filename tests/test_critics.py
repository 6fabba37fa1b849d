"""`--critics 1` for IQL and CQL: one Q network where the default trains two.

With one critic the minimum and the mean over critics are that critic itself, so CQL's
target is Double DQN's (the online critic picks the opponent's reply, the target critic
values it) and IQL's V regresses on the target critic alone. A checkpoint keeps the
critic count it trained with; resuming it with another count is one error line."""

from __future__ import annotations

import pytest
import torch
from test_offline_cli_errors import assert_one_error_line, main
from test_offline_inputs import GAMES
from test_offline_modes import MODES, StopAt, argv, objective_tensors
from test_offline_teacher import write_jsonl

from trainer.commands import cql
from trainer.commands.offline_common import build_offline
from trainer.config import load_config
from trainer.model.networks import build_network
from trainer.objectives.cql import CQLObjective
from trainer.objectives.iql import IQLObjective
from trainer.objectives.policy_value import ILLEGAL_LOGIT
from trainer.sources.offline_data import load_dataset
from trainer.training.state import load_checkpoint_file

COMMON = dict(lr=1e-3, weight_decay=0.0, grad_clip=0.0, gamma=0.9, target_update_rate=0.5)


def one_critic_objective(algo: str, spec):
    make = lambda: build_network(spec, "mlp", 16, 1)  # noqa: E731
    if algo == "iql":
        return IQLObjective(make(), make, expectile=0.7, beta=1.0, max_weight=10.0, critics=1, **COMMON)
    return CQLObjective(make(), make, alpha=1.0, policy_temperature=0.1, critics=1, **COMMON)


@pytest.mark.parametrize("algo", ["iql", "cql"])
def test_one_critic_is_one_network_and_its_targets_use_it_alone(algo, tmp_path):
    ds = load_dataset(write_jsonl(tmp_path / "t.jsonl", GAMES[:4]), transitions=True)
    batch = ds.batch(torch.arange(len(ds)))
    torch.manual_seed(0)
    obj = one_critic_objective(algo, ds.spec)
    twin = build_network(ds.spec, "mlp", 16, 1)
    assert len(obj.q(batch.obs)) == 1
    assert not any(k.startswith("q2.") for k in obj.state_dict()["q"])
    assert sum(p.numel() for p in obj.q.parameters()) == sum(p.numel() for p in twin.parameters())
    with torch.no_grad():  # a target critic unlike the online one, so a mix-up shows
        for p in obj.q_target.parameters():
            p.add_(torch.randn_like(p))
    out = obj.losses(batch)
    with torch.no_grad():
        online, target = obj.q.q1.policy_logits, obj.q_target.q1.policy_logits
        if algo == "cql":
            reply = online(batch.next_obs).masked_fill(~batch.next_legal_mask, ILLEGAL_LOGIT).argmax(-1)
            opp = target(batch.next_obs).gather(1, reply[:, None]).squeeze(1)
            opp = torch.where(batch.next_legal_mask.any(-1), opp, torch.zeros_like(opp))
            want = batch.reward + 0.9 * (1 - batch.done) * -opp
            assert torch.allclose(out["y"], want, atol=1e-6)
        else:
            q_data = target(batch.obs).gather(1, batch.action[:, None]).squeeze(1)
            v = obj.net(batch.obs)[1].squeeze(-1)
            assert torch.allclose(out["adv"], q_data - v, atol=1e-6)


def test_one_critic_resumes_like_an_uninterrupted_run(tmp_path):
    mode = "cql"  # the critics' state is TwinQObjective's, the same for iql
    command, config, fmt, _, interrupt_at, _ = MODES[mode]
    data = write_jsonl(tmp_path / "t.jsonl", GAMES)
    flags = ["--critics", "1"]
    assert command.main([*argv(mode, data, tmp_path / "a"), *flags]) == 0
    cfg = load_config(config, [*argv(mode, data, tmp_path / "b"), *flags])
    loop = build_offline(mode, cfg, command.make_objective)
    loop.hooks.append(StopAt(interrupt_at))
    loop.run()
    assert command.main([*argv(mode, data, tmp_path / "b"), *flags, "--resume"]) == 0

    a = load_checkpoint_file(tmp_path / "a" / "checkpoints" / "latest.pt")
    b = load_checkpoint_file(tmp_path / "b" / "checkpoints" / "latest.pt")
    assert b.step == a.step > interrupt_at
    ta, tb = objective_tensors(a), objective_tensors(b)
    assert ta.keys() == tb.keys() and ".q.q1.policy_head.weight" in ta
    assert not any(k.startswith(".q.q2.") for k in ta)
    for k in ta:
        assert torch.allclose(ta[k].float(), tb[k].float(), atol=1e-6), k


def test_resuming_with_another_critic_count_is_one_error(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "t.jsonl", GAMES[:20])
    out = tmp_path / "run"
    common = ["cql", *argv("cql", data, out)[:-2], "--log-level", "ERROR"]  # one stderr line: the error
    assert main(*common, capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path).returncode == 0
    latest = out / "checkpoints" / "latest.pt"
    before = latest.read_bytes()
    r = main(*common, "--resume", "--critics", "1", capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)
    assert_one_error_line(r, str(latest), "2 critic(s)", "--critics 1")
    assert latest.read_bytes() == before
    cql_cfg = load_config(MODES["cql"][1], [*argv("cql", data, out), "--resume"])
    build_offline("cql", cql_cfg, cql.make_objective).source.close()  # the default count still resumes it
