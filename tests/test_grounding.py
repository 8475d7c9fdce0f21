"""The optional Grounding DINO locator on a tiny random transformers model saved as a real folder."""


import numpy as np
import pytest
import torch
from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                          GroundingDinoProcessor, SwinConfig)

from vmdiff_jax.engine import grounding
from vmdiff_jax.checkpoints import MissingWeights

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "most", "prominent", "object", ".", "a", "the"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("gdino")
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    from transformers.models.grounding_dino import GroundingDinoImageProcessorPil

    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}),
                                  tokenizer=BertTokenizer(str(d / "vocab.txt")))
    torch.manual_seed(0)
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, image_size=64,
                                   out_features=["stage1", "stage2"]),
        text_config=BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10, num_feature_levels=2, encoder_n_points=2,
        decoder_n_points=2, max_text_len=16)
    GroundingDinoForObjectDetection(cfg).eval().save_pretrained(d)
    proc.save_pretrained(d)
    return d


def test_locator_returns_the_top_box_after_nms(folder, monkeypatch):
    image = np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    loc = grounding.GroundingDinoLocator(str(folder))
    seen = {}
    real_nms = grounding.nms

    def spy(boxes, scores, iou=grounding.NMS_IOU):
        seen["boxes"], seen["scores"] = boxes, scores
        return real_nms(boxes, scores, iou)

    monkeypatch.setattr(grounding, "nms", spy)
    box = loc(image)
    assert box is not None and "boxes" in seen
    assert (seen["scores"] > grounding.BOX_THRESHOLD).all()
    top = seen["boxes"][int(np.argmax(seen["scores"]))]
    assert np.allclose(box, top)
    x0, y0, x1, y1 = box
    assert -1 <= x0 <= x1 <= 101 and -1 <= y0 <= y1 <= 81
    monkeypatch.setattr(grounding, "BOX_THRESHOLD", 1.01)  # nothing passes: the caller falls back to the whole image
    assert loc(image) is None


def test_missing_folder_is_a_named_error(tmp_path):
    with pytest.raises(MissingWeights, match="no Grounding DINO folder"):
        grounding.GroundingDinoLocator(str(tmp_path / "nope"))
