"""The smaller fixes of issue 19: a run that learns nothing says so (seed 003's 3-row example), the hub download
error is shortened at a word boundary, and infer/deploy print no FutureWarning about is_gradient_checkpointing."""

from __future__ import annotations

import json
import warnings

import pytest

from swiftlite.cli import main


@pytest.fixture(scope="module")
def seed_003_rows(tmp_path_factory, shape_images) -> str:
    """Seed 003's custom dataset, word for word, with its img_path placeholders pointing at real images."""
    folder = tmp_path_factory.mktemp("seed003")
    red, green, blue = (str(shape_images[name]) for name in ("red", "green", "blue"))
    rows = [
        {"conversations": [{"from": "user", "value": f"Picture 1:<img>{red}</img>\n11111"},
                           {"from": "assistant", "value": "22222"}]},
        {"conversations": [
            {"from": "user", "value": f"Picture 1:<img>{red}</img>\nPicture 2:<img>{green}</img>\n"
                                      f"Picture 3:<img>{blue}</img>\naaaaa"},
            {"from": "assistant", "value": "bbbbb"},
            {"from": "user", "value": f"Picture 1:<img>{red}</img>\nccccc"},
            {"from": "assistant", "value": "ddddd"}]},
        {"conversations": [{"from": "user", "value": "AAAAA"}, {"from": "assistant", "value": "BBBBB"},
                           {"from": "user", "value": "CCCCC"}, {"from": "assistant", "value": "DDDDD"}]},
    ]
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("extra,warned", [([], True), (["--warmup_ratio", "0"], False)])
def test_a_run_whose_steps_all_have_learning_rate_0_says_so(qwen2_vl_dir, seed_003_rows, tmp_path, capsys,
                                                            extra, warned):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Defaults otherwise: 3 rows, 16 accumulation steps -> 1 optimizer step; a 5% warm-up makes it step 0.
        code = main(["sft", "--model", str(qwen2_vl_dir), "--dataset", seed_003_rows, "--dataset_test_ratio", "0",
                     "--dataloader_num_workers", "0", "--output_dir", str(tmp_path), *extra])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    message = ("mm sft: warning: all 1 optimizer step(s) ran at learning rate 0 (inside the warm-up, "
               "--warmup_ratio 0.05), so the weights did not change")
    assert (message in err) is warned, err[-3000:]


def test_hub_error_is_shortened_at_a_word_boundary():
    from swiftlite.models.loading import error_summary

    class NetworkError(Exception):
        pass

    # What ModelScope raised here without a network (the old message ended in "...&Recursive=Tr").
    error = NetworkError(
        "[E1020] Connection failed: _DownloadHTTPSConnectionPool(host='modelscope.cn', port=443): Max retries "
        "exceeded with url: /api/v1/models/qwen/Qwen2-VL-2B-Instruct/repo/files?Revision=master&Recursive=True "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPSConnection object at 0x7f3c>: Failed to establish "
        "a new connection: [Errno -2] Name or service not known'))")
    summary = error_summary(error)
    assert summary.startswith("NetworkError: [E1020] Connection failed:") and len(summary) < 300
    words = set(str(error).split()) | {"..."}
    kept, _, errno = summary.partition(" ([Errno")
    assert all(word in words for word in kept.split()[1:])  # whole words only
    assert errno == " -2] Name or service not known)"  # the reason survives the shortening
    assert error_summary(ValueError("no such\nrepo")) == "ValueError: no such repo"


def test_infer_and_deploy_loading_warn_nothing_about_gradient_checkpointing(qwen2_vl_dir, tmp_path):
    from test_deploy_support import make_lora

    from swiftlite.deploy import load_adapter
    from swiftlite.models.checkpoint import load_for_inference

    ckpt = make_lora(qwen2_vl_dir, tmp_path / "checkpoint-1", seed=3)
    (ckpt / "sft_args.json").write_text(json.dumps({"model_id_or_path": str(qwen2_vl_dir), "template_type": "qwen2-vl"}))
    extra = make_lora(qwen2_vl_dir, tmp_path / "extra", seed=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_for_inference(ckpt_dir=str(ckpt))  # mm infer --ckpt_dir (peft wraps the model)
        plain = load_for_inference(model_id_or_path=str(qwen2_vl_dir))
        load_adapter(plain.model, str(extra), "extra", "extra")  # mm deploy --lora_modules
    assert type(loaded.model).__name__ == "PeftModel"
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    # The filter was local to loading: the deprecation itself still warns elsewhere.
    with pytest.warns(FutureWarning, match="is_gradient_checkpointing"):
        plain.model.is_gradient_checkpointing
