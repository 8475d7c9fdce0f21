"""Optional object locator: Grounding DINO through transformers (extra `[grounding]`).

The one module of vmdiff_jax allowed to import torch, and only when constructed.
As the authors' code: query "most prominent object.", box and text thresholds 0.25,
non-maximum suppression at IoU 0.8, the first (highest-scoring) box kept.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

QUERY = "most prominent object."
BOX_THRESHOLD = 0.25
TEXT_THRESHOLD = 0.25
NMS_IOU = 0.8


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first (torchvision.ops.nms semantics)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0) * (y1 - y0)
    while order.size:
        i = order[0]
        keep.append(i)
        xx0, yy0 = np.maximum(x0[i], x0[order[1:]]), np.maximum(y0[i], y0[order[1:]])
        xx1, yy1 = np.minimum(x1[i], x1[order[1:]]), np.minimum(y1[i], y1[order[1:]])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        ov = inter / (area[i] + area[order[1:]] - inter + 1e-12)
        order = order[1:][ov <= iou]
    return np.asarray(keep, np.int64)


class GroundingDinoLocator:
    """Grounding DINO (e.g. IDEA-Research/grounding-dino-tiny) from a local folder, on the CPU or CUDA."""

    def __init__(self, path: str, device: str = "cpu"):
        from pathlib import Path

        if not Path(path).is_dir():
            from vmdiff_jax.checkpoints.weights import MissingWeights

            raise MissingWeights(f"{path}: no Grounding DINO folder (download IDEA-Research/grounding-dino-tiny there, "
                                 "or set VMDIFF_GROUNDING_DINO; or use --locator dino)")
        try:
            import torch  # noqa: F401
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        except ImportError:  # pragma: no cover - depends on the extra
            from vmdiff_jax.checkpoints.weights import MissingWeights

            raise MissingWeights("the grounding locator needs `pip install vmdiff-jax[grounding]` (torch + transformers)") from None
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device = device

    def __call__(self, image: np.ndarray) -> Optional[tuple[float, float, float, float]]:
        import torch
        from PIL import Image

        pil = Image.fromarray(np.asarray(image, np.uint8))
        inputs = self.processor(images=pil, text=QUERY, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model(**inputs)
        res = self.processor.post_process_grounded_object_detection(
            out, inputs.input_ids, threshold=BOX_THRESHOLD, text_threshold=TEXT_THRESHOLD, target_sizes=[pil.size[::-1]]
        )[0]
        boxes, scores = res["boxes"].cpu().numpy(), res["scores"].cpu().numpy()
        if len(boxes) == 0:
            return None
        first = nms(boxes, scores)[0]
        return tuple(float(v) for v in boxes[first])
