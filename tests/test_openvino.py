"""OpenVINO backend: the IR equals PyTorch float32 (fp32 hint), the NNCF int8 IR within the onnx-int8
tolerance policy, bad / mismatched IR files give one-line errors, the backend choice and its
reporting in detect's first line, the converted-model cache, and the OpenMP wait-policy fix
(thread interference) checked without timing."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import detkit
from detkit.cli import main
from detkit.errors import DataError, WeightsError
from detkit.infer.backends import choose_backend, configure_thread_pools, parse_cpuinfo
from helpers import detect_argv, disc_images, make_dataset, write_tiny_model

ov = pytest.importorskip("openvino")

from detkit.infer.openvino_export import export_openvino, quantize_openvino_int8  # noqa: E402
from detkit.infer.openvino_model import OpenVinoModel, cache_root, openvino_core  # noqa: E402


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Converted IRs and compiled blobs go to a temporary cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))



@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random-weight yolov3-tiny (2 classes) at 96x64: float32 IR and NNCF int8 IR (12 images)."""
    tmp = tmp_path_factory.mktemp("ov")
    torch.manual_seed(0)
    model = detkit.build_model("yolov3-tiny", num_classes=2).eval()
    calib = disc_images(tmp / "calib", 12, size=(96, 64))
    fp32, _ = export_openvino(model, tmp / "m.xml", (96, 64))
    int8 = quantize_openvino_int8(model, tmp / "m8.xml", calib, img_size=(96, 64))
    return model, fp32, int8, calib


def _batch(paths, size=(96, 64)) -> torch.Tensor:
    from detkit.data.images import letterbox, read_image

    return torch.stack([torch.from_numpy(letterbox(read_image(p), size)[0].transpose(2, 0, 1).copy())
                        for p in paths]).float() / 255


def test_fp32_ir_equals_pytorch_float32(exported, tmp_path):
    model, fp32, _, calib = exported
    om = OpenVinoModel(fp32, precision="fp32", threads=1, cache_dir=tmp_path / "c")
    assert om.num_classes == 2 and om.fixed_input_size == (96, 64) and om.fixed_batch is None
    assert om.fast_info.precision == "fp32" and om.metadata["detkit.precision"] == "fp32"
    x = _batch(calib[:3])
    with torch.no_grad():
        ref = model(x)
    out = om(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert float((out[..., 4:] - ref[..., 4:]).abs().max()) < 1e-4  # probabilities
    assert float(((out[..., :4] - ref[..., :4]).abs() / ref[..., :4].abs().clamp(min=1)).max()) < 1e-4  # pixels
    assert np.array_equal(om.forward_numpy(x[:1].numpy()), out[:1].numpy())  # batch 1 and batch 3 alike
    assert any((tmp_path / "c").iterdir())  # compiled blobs cached


def test_int8_ir_within_the_onnx_int8_tolerance(exported):
    model, _, res, calib = exported
    om = OpenVinoModel(res.path, threads=1, cache_dir="")
    assert om.fast_info.precision == "int8" and "int8" in om.fast_info.describe()
    assert om.metadata["detkit.precision"] == "int8" and om.metadata["detkit.fp32_layers"] == "15,22"
    assert om.metadata["detkit.calibration"].startswith("12 images (nncf")
    ops = [op.get_type_name() for op in openvino_core().read_model(str(res.path)).get_ops()]
    assert "FakeQuantize" in ops and res.quantized_convs == 11 and res.fp32_layers == (15, 22)
    x = _batch(calib[:4])
    with torch.no_grad():
        ref = model(x)
    out = om(x)
    # the same policy as tests/test_int8.py for onnx-int8
    box_err = (out[..., :4] - ref[..., :4]).abs()
    assert float(box_err.median()) < 1.0 and float(box_err.max()) < 12.0
    prob_err = (out[..., 4:] - ref[..., 4:]).abs()
    assert float(prob_err.mean()) < 0.02 and float(prob_err.max()) < 0.25
    assert np.corrcoef(out[..., 4:].numpy().ravel(), ref[..., 4:].numpy().ravel())[0, 1] > 0.98


def test_bad_and_mismatched_ir_files_are_one_line_errors(exported, tmp_path):
    _, fp32, _, _ = exported
    with pytest.raises(WeightsError, match="OpenVINO model not found"):
        OpenVinoModel(tmp_path / "missing.xml")
    lone = tmp_path / "lone.xml"
    lone.write_text(fp32.read_text())
    with pytest.raises(WeightsError, match=r"lone\.bin is missing"):
        OpenVinoModel(lone)
    junk = tmp_path / "junk.xml"
    junk.write_text("<net><layers></net>")
    junk.with_suffix(".bin").write_bytes(b"\0" * 16)
    with pytest.raises(WeightsError, match=r"junk\.xml: not a loadable OpenVINO/ONNX model") as e:
        OpenVinoModel(junk)
    assert "\n" not in str(e.value)
    # a valid IR that is not a detector: two outputs
    import openvino.opset13 as ops

    a = ops.parameter([1, 3, 8, 8], np.float32, name="a")
    two = ov.Model([ops.relu(a), ops.sigmoid(a)], [a], "two")
    ov.save_model(two, str(tmp_path / "two.xml"))
    with pytest.raises(WeightsError, match="expected one input and one output"):
        OpenVinoModel(tmp_path / "two.xml")
    with pytest.raises(ValueError, match="precision must be one of"):
        OpenVinoModel(fp32, precision="fp16")
    om = OpenVinoModel(fp32, threads=1, cache_dir="")
    with pytest.raises(ValueError, match=r"takes \(N, 3, 64, 96\)"):
        om.forward_numpy(np.zeros((1, 3, 64, 64), np.float32))


def test_cli_ir_class_mismatch_and_wrong_suffix(exported, tmp_path, capsys):
    _, fp32, _, calib = exported
    (tmp_path / "three.names").write_text("a\nb\nc\n")
    code = main(["detect", "--weights", str(fp32), "--names", str(tmp_path / "three.names"), "--source",
                 str(calib[0]), "--out", str(tmp_path / "o"), "--no-images"])
    err = capsys.readouterr().err
    assert code == 1 and "the OpenVINO model gives 2 classes but the names file" in err
    assert err.count("\n") == 1
    folder = tmp_path / "m"
    folder.mkdir()
    write_tiny_model(folder)
    code = main(["export", "--cfg", str(folder / "tiny.cfg"), "--weights", str(folder / "tiny.weights"),
                 "--format", "openvino", "-o", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 1 and "writes an IR NAME.xml" in err and err.count("\n") == 1


def test_choose_backend():
    have = {"torch": True, "onnxruntime": True, "openvino": True}
    assert choose_backend("auto", "darknet", "cpu", have).backend == "openvino"
    assert choose_backend("auto", "onnx", "cpu", have).backend == "openvino"
    assert choose_backend("auto", "onnx", "cpu", have, onnx_quantized=True).backend == "onnxruntime"
    assert choose_backend("auto", "openvino", "cpu", have).backend == "openvino"
    assert choose_backend("auto", "darknet", "cuda", have).backend == "torch"
    assert choose_backend("torch", "darknet", "cpu", have).reason == "as requested"
    no_ov = {"torch": True, "onnxruntime": True, "openvino": False}
    assert choose_backend("auto", "darknet", "cpu", no_ov).backend == "torch"
    assert choose_backend("auto", "onnx", "cpu", no_ov).backend == "onnxruntime"
    for args, message in [(("openvino", "darknet", "cpu", no_ov), "needs the openvino package"),
                          (("torch", "onnx", "cpu", have), "--backend torch runs a cfg"),
                          (("onnxruntime", "openvino", "cpu", have), "runs with --backend openvino"),
                          (("openvino", "darknet", "cuda", have), "runs on the CPU"),
                          (("fast", "darknet", "cpu", have), "--backend must be one of")]:
        with pytest.raises(DataError, match=message):
            choose_backend(*args)
    with pytest.raises(DataError, match="onnxruntime's int8 format"):
        choose_backend("openvino", "onnx", "cpu", have, onnx_quantized=True)


def test_cpu_features_from_cpuinfo():
    amd = parse_cpuinfo("processor: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert amd.model == "AMD EPYC" and amd.avx512_bf16 and amd.vnni and not amd.amx and amd.native_bf16
    assert amd.describe() == "AMD EPYC: AVX512-BF16, VNNI, no AMX"
    xeon = parse_cpuinfo("model name: Xeon\nflags: avx2 amx_tile amx_bf16 avx512_bf16\n")
    assert xeon.amx and xeon.describe().startswith("Xeon: AMX")
    old = parse_cpuinfo("model name: Old\nflags: sse2 avx2\n")
    assert not old.native_bf16 and not old.vnni


def test_detect_names_the_backend_and_caches_the_conversion(tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    write_tiny_model(folder, head_bias=[2.0, 1.0, -1.0])
    (folder / "two.names").write_text("a\nb\n")
    imgs = disc_images(tmp_path / "imgs", 3, size=(64, 64))
    runs = {}
    for backend in ("auto", "openvino", "torch"):
        out = tmp_path / backend
        assert main(detect_argv(folder, out, "--source", str(imgs[0].parent), "--no-images", "--conf", "0.3",
                                "--backend", backend, "--precision", "fp32")) == 0
        first = capsys.readouterr().out.splitlines()[0]
        runs[backend] = (first, json.loads((out / "detections.json").read_text()))
    assert runs["auto"][0].startswith("backend: openvino (fp32, ") and "auto: the fastest installed" in runs["auto"][0]
    assert runs["openvino"][0].startswith("backend: openvino (fp32, ") and "as requested" in runs["openvino"][0]
    assert runs["torch"][0].startswith("backend: torch (PyTorch fast path; as requested)")
    irs = list((cache_root() / "ir").glob("*.xml"))
    assert len(irs) == 1 and str(cache_root()).startswith(str(tmp_path / "xdg"))  # converted once, reused
    # fp32 OpenVINO and the PyTorch fp32 fast path find the same boxes
    ov_dets, pt_dets = runs["openvino"][1], runs["torch"][1]
    assert len(ov_dets) == len(pt_dets)
    for a, b in zip(ov_dets, pt_dets):
        assert a["class_id"] == b["class_id"] and abs(a["score"] - b["score"]) < 1e-4
        assert np.allclose(a["box_xyxy"], b["box_xyxy"], atol=1e-2)
    # eval runs the IR without a cfg
    data = make_dataset(tmp_path / "ds", n_train=2, n_val=3, size=(64, 64))
    assert main(["eval", "--weights", str(irs[0]), "--data", str(data), "--metric", "voc"]) == 0
    assert "mAP" in capsys.readouterr().out


_RUN_CLI = ("import sys\nfrom detkit.cli import main\nrc = main(sys.argv[1:])\n"
            "print('TORCH_IMPORTED', 'torch' in sys.modules, 'torchvision' in sys.modules, 'RC', rc)\n")


def _cli_imports_torch(argv: list[str]) -> tuple[bool, str]:
    """Run ``detkit ARGV`` in a fresh interpreter; (whether torch got imported, its stdout)."""
    proc = subprocess.run([sys.executable, "-c", _RUN_CLI, *argv], capture_output=True, text=True, check=True)
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "TORCH_IMPORTED" and last[-1] == "0", proc.stdout + proc.stderr
    return last[1] == "True" or last[2] == "True", proc.stdout


def test_openvino_detect_never_imports_torch(tmp_path):
    """Start-up is part of what a user waits for: torch + torchvision cost seconds to import. An IR,
    and a cfg + weights whose IR is cached, are detected with numpy, OpenCV and OpenVINO only; the
    first conversion (and ``--backend torch``) do import torch; ``detkit --help`` never does."""
    folder = tmp_path / "m"
    folder.mkdir()
    write_tiny_model(folder, head_bias=[2.0, 1.0, -1.0])
    (folder / "two.names").write_text("a\nb\n")
    imgs = disc_images(tmp_path / "imgs", 3, size=(64, 64))
    src = ["--source", str(imgs[0].parent), "--no-images", "--conf", "0.3", "--device", "auto"]
    first, out = _cli_imports_torch(detect_argv(folder, tmp_path / "a", *src))
    assert first and out.startswith("backend: openvino")  # converted: PyTorch built the model
    again, _ = _cli_imports_torch(detect_argv(folder, tmp_path / "b", *src))
    assert not again  # the cached IR
    assert (tmp_path / "a" / "detections.json").read_bytes() == (tmp_path / "b" / "detections.json").read_bytes()
    xml = next((cache_root() / "ir").glob("*.xml"))
    ir_run, _ = _cli_imports_torch(["detect", "--weights", str(xml), "--names", str(folder / "two.names"),
                                    "--out", str(tmp_path / "c"), *src])
    assert not ir_run
    assert json.loads((tmp_path / "c" / "detections.json").read_text()) == \
        json.loads((tmp_path / "a" / "detections.json").read_text())
    torch_run, _ = _cli_imports_torch(detect_argv(folder, tmp_path / "d", *src, "--backend", "torch"))
    assert torch_run
    proc = subprocess.run([sys.executable, "-c", "import sys\nfrom detkit.cli import build_parser\nbuild_parser()\n"
                           "print('torch' in sys.modules)"], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False"]


def test_cli_export_openvino_and_int8(tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    write_tiny_model(folder, head_bias=[2.0, 1.0, -1.0])
    imgs = disc_images(tmp_path / "imgs", 4, size=(64, 64))
    base = ["export", "--cfg", str(folder / "tiny.cfg"), "--weights", str(folder / "tiny.weights")]
    assert main(base + ["--format", "openvino", "-o", str(tmp_path / "t.xml")]) == 0
    text = capsys.readouterr().out
    assert "(openvino IR, float32" in text and "verified with OpenVINO (fp32 hint, batch 2)" in text
    assert (tmp_path / "t.bin").is_file()
    assert main(base + ["--format", "openvino-int8", "--calib", str(imgs[0].parent), "-o", str(tmp_path / "t8.xml")]) == 0
    text = capsys.readouterr().out
    assert "(openvino-int8" in text and "calibrated on 4 images" in text and "checked with OpenVINO" in text
    code = main(base + ["--format", "openvino-int8", "-o", str(tmp_path / "u.xml")])
    assert code == 1 and "needs --calib" in capsys.readouterr().err


def test_wait_policy_is_set_before_torch_loads():
    """The thread-interference fix: idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) when
    configure_thread_pools runs before torch is imported, a user's own setting is kept, and a
    process that imported torch first is told it is too late (no timing: the setting is checked)."""
    code = ("import os, sys\n"
            "from detkit.infer.backends import configure_thread_pools\n"
            "ok = configure_thread_pools()\n"
            "import torch\n"
            "print(ok, os.environ.get('OMP_WAIT_POLICY'))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "PASSIVE"]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "ACTIVE"]
    late = ("import os, torch\nfrom detkit.infer.backends import configure_thread_pools\n"
            "print(configure_thread_pools(), os.environ.get('OMP_WAIT_POLICY'))\n")
    out = subprocess.run([sys.executable, "-c", late], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "None"]
    assert configure_thread_pools() in (True, False)  # this process: torch is loaded already


def test_models_released_in_creation_order_leave_signal_handlers_working(exported):
    """Two OpenVINO models released first-created-first (as garbage collection does), then a Python
    signal handler runs. With one ``ov.Core`` per model the thread's signal stack was left on a freed
    Core's memory and the handler killed the process with SIGSEGV (seen in CI as pytest dying
    while it waited on a browser subprocess); detkit's one shared Core keeps it valid."""
    _, fp32, _, _ = exported
    code = ("import gc, os, signal, sys, numpy as np\n"
            "from detkit.infer.openvino_model import OpenVinoModel\n"
            "x = np.zeros((1, 3, 64, 96), np.float32)\n"
            "a = OpenVinoModel(sys.argv[1], threads=1, cache_dir=''); a.forward_numpy(x)\n"
            "b = OpenVinoModel(sys.argv[1], threads=1, cache_dir=''); b.forward_numpy(x)\n"
            "del a; gc.collect(); del b; gc.collect()\n"
            "hits = []\n"
            "signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "print('handled', len(hits))\n")
    res = subprocess.run([sys.executable, "-c", code, str(fp32)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"rc={res.returncode}: {res.stderr[-1500:]}"
    assert res.stdout.split() == ["handled", "1"]
