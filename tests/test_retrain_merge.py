"""--merge: the weight-space ensemble (WiSE-FT) of the fine-tuned challenger with its champion, on real layers
and LoRA adapters, the refusal of shares outside [0, 1], and the step inside a real (tiny) retraining run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from backend.lora import LoRALinear
from tests.retrain_helpers import cli_args, fill_store, small_config
from train import retrain
from train.retrain import RetrainError, build_parser, champion_weights, merge_into, run


def tiny_net() -> nn.Module:
    """A trained head and a LoRA-wrapped layer whose base stays frozen, as trainable_groups leaves them."""
    torch.manual_seed(0)
    net = nn.ModuleDict({"head": nn.Linear(6, 3), "adapted": LoRALinear(nn.Linear(6, 4), rank=2, alpha=4.0)})
    net.requires_grad_(False)
    for name, param in net.named_parameters():
        param.requires_grad_(name.startswith("head.") or ".lora_" in name)
    return net


def fine_tune(net: nn.Module) -> dict[str, torch.Tensor]:
    """Move every trainable parameter (as a run would) and return a copy of all weights after it."""
    with torch.no_grad():
        for param in net.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    return {n: p.detach().clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_merge_interpolates_trained_parameters_only(share: float) -> None:
    net = tiny_net()
    champion = champion_weights(net)
    assert set(champion) == {"head.weight", "head.bias", "adapted.lora_A", "adapted.lora_B"}
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in champion.values())
    trained = fine_tune(net)
    assert merge_into(net, champion, share) == 4
    for name, param in net.named_parameters():
        if name in champion:
            expected = champion[name] + share * (trained[name] - champion[name])
            assert torch.allclose(param, expected, atol=1e-6), name
        else:
            assert torch.equal(param, trained[name]), name  # the frozen base: untouched
    after = dict(net.named_parameters())
    if share == 0.0:
        assert all(torch.equal(after[n], champion[n]) for n in champion)  # the champion exactly
    if share == 1.0:
        assert all(torch.equal(after[n], trained[n]) for n in champion)  # the trained weights as they are


def test_merge_takes_named_parameters_and_keeps_their_dtype() -> None:
    net = tiny_net().to(torch.bfloat16)
    champion = champion_weights(net)
    assert all(t.dtype == torch.float32 for t in champion.values())
    trained = fine_tune(net)
    merge_into(net.named_parameters(), champion, 0.5)
    head = net["head"].weight
    assert head.dtype == torch.bfloat16
    midpoint = (champion["head.weight"] + trained["head.weight"].float()) / 2
    assert torch.allclose(head.float(), midpoint, atol=2e-2)


def test_a_share_outside_zero_one_is_refused(tmp_path: Path, capsys) -> None:
    parser = build_parser()
    assert parser.parse_args(["--db", "x.db", "--merge", "0.4"]).merge == 0.4
    assert parser.parse_args(["--db", "x.db"]).merge == 0.5  # the shipped recipe keeps half the change
    for bad in ("1.5", "-0.1", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--db", "x.db", "--merge", bad])
        assert "--merge: must be between 0 and 1" in capsys.readouterr().err
    config = retrain.RetrainConfig(db=str(tmp_path / "x.db"), out=str(tmp_path / "run"), merge=1.5, lock=False)
    with pytest.raises(RetrainError, match=r"--merge .* between 0 and 1, got 1\.5"):
        retrain.train(config)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.fixture()
def fresh_accelerate_state():
    """accelerate keeps a process-wide state; the run here starts and ends with a clean one (FACTS)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_a_resumed_run_saves_the_challenger_merged_with_the_champion(
    tmp_path, shared_data, tiny_model_dir, tiny_backbones, monkeypatch, fresh_accelerate_state
) -> None:
    """Stopped after a checkpoint, then resumed: the merge still pulls toward the champion, not the checkpoint,
    and happens on the weights that are saved."""
    from accelerate.state import AcceleratorState

    db = tmp_path / "studio.db"
    fill_store(db, shared_data)
    config = small_config(
        tmp_path,
        db,
        tiny_model_dir,
        tiny_backbones["cache"],
        shared_data,
        gate=False,
        merge=0.5,
        checkpoint_every=2,
        stop_after_steps=4,
    )
    assert build_parser().parse_args(cli_args(config)).merge == 0.5
    assert run(config) == {"stopped": True, "step": 4}
    AcceleratorState._reset_state(True)
    seen: dict = {}

    def spy(model, champion, share):
        seen["trained"] = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if n in champion}
        seen["champion"], seen["share"] = champion, share
        return merge_into(model, champion, share)

    monkeypatch.setattr(retrain, "merge_into", spy)
    result = run(dataclasses.replace(config, stop_after_steps=0, resume=True))
    assert result["merge"] == 0.5 and seen["share"] == 0.5
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(Path(config.out) / "challenger" / "model.safetensors"))
    champion, trained = seen["champion"], seen["trained"]
    assert any(k.startswith("heads.speech_head.") for k in champion) and any(".lora_" in k for k in champion)
    for name, old in champion.items():
        assert torch.equal(old, before[name].float()), name  # the snapshot is the champion's, not step 4's
        assert torch.allclose(after[name].float(), (old + trained[name]) / 2, atol=1e-6), name
    assert any(not torch.equal(trained[n], champion[n]) for n in champion)  # the run did move them
    untrained = [k for k in before if k.startswith(("heads.face_net.", "heads.projections.face."))]
    assert untrained and all(torch.equal(before[k], after[k]) for k in untrained)  # no face data: untouched
    records = [json.loads(line) for line in (Path(config.out) / "log.jsonl").read_text().splitlines()]
    (trained_event,) = [r for r in records if r.get("event") == "trained"]
    assert trained_event["merge"] == 0.5
