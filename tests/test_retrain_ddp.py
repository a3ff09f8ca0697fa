"""`accelerate launch` with two CPU processes (DDP over gloo): the batches are sharded, the gradients averaged
(both processes end with the same weights), one challenger is written and one decision recorded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labeling.store import Store
from tests.retrain_helpers import cli_args, fill_paired, fill_store, small_config

REPO = Path(__file__).resolve().parents[1]


def launch_two_cpu_processes(config) -> subprocess.CompletedProcess:
    launcher = shutil.which("accelerate")
    assert launcher, "the accelerate command comes with the accelerate package (requirements.txt)"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        launcher,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "train.retrain",
        *cli_args(config),
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_two_cpu_processes_train_one_model(tmp_path, shared_data, tiny_model_dir, tiny_backbones):
    fill_store(tmp_path / "studio.db", shared_data)
    config = small_config(
        tmp_path,
        tmp_path / "studio.db",
        tiny_model_dir,
        tiny_backbones["cache"],
        shared_data,
        min_gain=-1.0,
        checkpoint_every=2,
    )
    done = launch_two_cpu_processes(config)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])  # printed by the main process only
    assert result["processes"] == 2 and result["replicas_in_sync"]
    assert result["step"] == 2 * 3  # 24 items / (batch 4 x 2 processes) = 3 steps per epoch, 2 epochs
    assert result["decision"]["promote"] and result["decision"]["version"] == "v1"
    out = Path(config.out)
    assert (out / "checkpoints" / "step_6" / "complete.json").exists()
    starts = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"start"' in line]
    assert len(starts) == 1 and starts[0]["processes"] == 2
    with Store.open(config.db) as store:
        assert [r["decision"] for r in store.training_runs()] == ["promoted"]


def test_two_cpu_processes_train_the_gate_on_paired_corrections(tmp_path, shared_data, tiny_model_dir, tiny_backbones):
    """The gate is used outside the DDP module's forward (in the fused loss); its gradients must still be averaged."""
    fill_paired(tmp_path / "studio.db", shared_data)
    config = small_config(
        tmp_path, tmp_path / "studio.db", tiny_model_dir, tiny_backbones["cache"], shared_data, gate=False
    )
    done = launch_two_cpu_processes(config)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["gate_trained"] and result["processes"] == 2 and result["replicas_in_sync"]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA (bf16 on a GPU)")
def test_one_gpu_in_bf16(tmp_path, shared_data, tiny_model_dir, tiny_backbones):
    from accelerate.state import AcceleratorState

    from train.retrain import run

    fill_store(tmp_path / "studio.db", shared_data)
    config = small_config(
        tmp_path, tmp_path / "studio.db", tiny_model_dir, tiny_backbones["cache"], shared_data, cpu=False, gate=False
    )
    try:
        summary = run(config)
    finally:
        AcceleratorState._reset_state(True)
    assert summary["precision"] == "bf16" and summary["step"] == 12
    assert (Path(config.out) / "challenger" / "model.safetensors").exists()
    assert sys.modules["torch"].cuda.max_memory_allocated() > 0
