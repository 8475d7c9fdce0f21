"""Our CLIP tokenizer (tokenizers-backed) against transformers' CLIPTokenizer, on a BPE vocabulary learned here."""

import json
import random

import numpy as np
import pytest

from bpe_vocab import train_bpe, write_folder
from vmdiff_jax.checkpoints.tokenizer import load_tokenizer
from vmdiff_jax.nn.tokenizer import BOS
from vmdiff_jax.engine.demo import TOKENIZER_FOLDER as DEMO_FOLDER, demo_tokenizer
from vmdiff_jax.checkpoints import CheckpointError, MissingWeights

# The English text the test vocabulary and the demo asset (vmdiff_jax/assets/tokenizer) are learned from.
CORPUS = """
A photo of a charizard figurine creatively fused with a panda figurine.
A photo of a red apple creatively fused with a green pear. A photo of a cat.
The quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill.
Object fusion takes two images of objects and produces one image of a single new object that
combines the shape, the texture and the colors of both. The model starts from noise and
removes it step by step, guided by the features of the two reference images.
A golden retriever puppy playing with a tennis ball in the garden on a sunny afternoon.
An orange tabby kitten sitting next to a ceramic teapot, a wooden toy train and a rubber duck.
Fruits such as bananas, strawberries, oranges, lemons, pineapples, watermelons and grapes
are photographed on a white background in a studio with soft lighting.
Animals such as elephants, giraffes, zebras, penguins, owls, rabbits, turtles and horses
appear in the benchmark together with character figurines, toys, cups, chairs and lamps.
It's a small plastic figure; they're painted by hand and we've seen many of them. I'm sure
you'll like the dragon, and I'd say the robot is the best. Don't touch the glass!
There are 40 object images, 780 unordered pairs and 1560 ordered pairs in the benchmark.
The similarity score adds the visual and the textual similarities and subtracts their
differences, so that a balanced fusion of both objects scores higher than an image that
shows only one of them. The search tries several mixing weights and keeps the best image.
A high quality photograph of a stuffed teddy bear, a porcelain vase, a silver spoon and a
leather boot, each centered in the frame, sharp focus, natural colors, detailed texture.
""".strip().splitlines()

TEXTS = [
    "A photo of charizard figurine creatively fused with panda figurine.",
    "A  cat .",
    "['A  cat .']",
    "",
    "   ",
    "Hello, World!!! 123 4567 3.14159",
    "it's they're I'M we'VE you'll he'd don't DON'T a''s '''s 's's",
    "tab\tnew\nline\r\x0b\x0cend  many     spaces",
    "a\x1cb\x1dc\x1ed\x1fe\x85f\xa0g\u2028h\u200bi\u3000j\ufeffk",  # odd whitespace / format characters
    "ΟΔΟΣ Σίσυφος İstanbul Straße ﬁne Ǆ",  # lowercasing edge cases
    "café naïve cafe\u0301 \u0301abc",  # NFC
    "日本語のテキスト 한국어 😀👍🏽 👨‍👩‍👧 १२३ ٣٤٥ ½ Ⅻ",
    "<|startoftext|>hi<|endoftext|> x<|endoftext|>y <|ENDOFTEXT|>",
    "&amp; &lt;b&gt; #hashtag @user http://example.com/a_b?c=d",
    "word " * 100,  # beyond 77 tokens: truncated, EOS kept last
    "x" * 300,
    "fruits, animals; figurines: (toys) [cups] {chairs} <lamps> 'quoted' \"double\" -dash- ...",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    vocab, merges = train_bpe(CORPUS, 800)
    assert len(vocab) == 800 and len(merges) >= 280
    return write_folder(tmp_path_factory.mktemp("tok"), vocab, merges)


def reference(folder):
    import transformers

    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def ref_ids(ref, texts, max_length=77):
    out = ref(list(texts), padding="max_length", max_length=max_length, truncation=True)
    return np.asarray(out["input_ids"]), np.asarray(out["attention_mask"])


def test_matches_transformers_exactly(folder):
    ref, ours = reference(folder), load_tokenizer(folder)
    want_ids, want_mask = ref_ids(ref, TEXTS)
    ids, mask = ours(TEXTS, return_mask=True)
    assert ids.dtype == np.int32 and ids.shape == (len(TEXTS), 77)
    for t, a, b in zip(TEXTS, ids, want_ids):
        np.testing.assert_array_equal(a, b, err_msg=repr(t))
    np.testing.assert_array_equal(mask, want_mask)
    # the long texts were truncated, EOS last; the pad token is <|endoftext|>
    assert ids[-3, -1] == ours.eos_id and ids[-3, 0] == ours.bos_id and mask[-3].all()
    assert ours.pad_id == ours.eos_id == ref.pad_token_id
    # other max lengths
    np.testing.assert_array_equal(ours(TEXTS, max_length=16), ref_ids(ref, TEXTS, 16)[0])


def test_random_strings_match_transformers(folder):
    ref, ours = reference(folder), load_tokenizer(folder)
    pool = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-_()[]{}<>|/\\@#$%^&*+=~`")
    pool += list("  \t\n\r\x0b\x0c\x85\xa0\u2028\u3000\u200b\ufeff\x1c\x1f")
    pool += list("éèêëÉÈçÇñÑßøÅæŒ\u0301\u0308ΣσςΑΩαωİıЖжЯя日本語中文한국어😀👍🏽\u200d١٢३½Ⅻ²ﬁǅ")
    pool += ["<|endoftext|>", "<|startoftext|>", "'s", "'ll", "'RE", "'T", "the ", "figurine "]
    rng = random.Random(0)
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(1000)]
    want, _ = ref_ids(ref, texts)
    got = ours(texts)
    bad = [t for t, a, b in zip(texts, got, want) if not np.array_equal(a, b)]
    assert not bad, f"{len(bad)} differ, e.g. {bad[0]!r}"


def test_open_clip_padding_and_truncation(folder):
    ours = load_tokenizer(folder)
    ids = ours(["a cat", "word " * 100], pad_id=0)
    n = len(ours.encode("a cat"))
    assert ids[0, 0] == ours.bos_id and ids[0, n + 1] == ours.eos_id and (ids[0, n + 2 :] == 0).all()
    assert ids[1, -1] == ours.eos_id and (ids[1] != 0).all()
    # open_clip receives "['A  cat .']" in the authors' code: a different token sequence from "A  cat ."
    assert ours.encode("['A  cat .']") != ours.encode("A  cat .")


def test_tokenizer_json_and_special_tokens_map(folder, tmp_path):
    """A folder with only tokenizer.json (what transformers saves), and a pad token from special_tokens_map.json."""
    ref = reference(folder)
    ref.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "vocab.json").exists()
    ours = load_tokenizer(tmp_path / "saved")
    np.testing.assert_array_equal(ours(TEXTS), ref_ids(ref, TEXTS)[0])

    sd2 = tmp_path / "sd2"  # Stable Diffusion 2 style: pad "!" (id 0)
    vocab = json.loads((folder / "vocab.json").read_text())
    write_folder(sd2, vocab, [tuple(l.split()) for l in (folder / "merges.txt").read_text().splitlines()[1:]])
    (sd2 / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!"}, "bos_token": BOS}))
    ours = load_tokenizer(sd2)
    assert ours.pad_id == vocab["!"] == 0
    np.testing.assert_array_equal(ours(TEXTS), ref_ids(reference(sd2), TEXTS)[0])


def test_decode_matches_transformers(folder):
    ref, ours = reference(folder), load_tokenizer(folder)
    for t in TEXTS[:2] + TEXTS[5:7] + TEXTS[11:12]:
        ids = ours([t])[0]
        assert ours.decode(ids) == ref.decode(ids.tolist(), skip_special_tokens=True), t


def test_bad_folder_raises(tmp_path):
    with pytest.raises(MissingWeights, match="vocab.json"):
        load_tokenizer(tmp_path)
    write_folder(tmp_path, {"a": 0}, [])
    with pytest.raises(CheckpointError, match="not in the vocabulary"):
        load_tokenizer(tmp_path)


def test_demo_asset():
    """The built-in demo tokenizer: learned from CORPUS (reproducible), 1024 tokens, small, transformers-compatible."""
    vocab, merges = train_bpe(CORPUS, 1024)
    folder = DEMO_FOLDER
    assert json.loads((folder / "vocab.json").read_text(encoding="utf-8")) == vocab
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and [tuple(l.split()) for l in lines[1:]] == merges
    assert sum(f.stat().st_size for f in folder.iterdir()) < 100_000
    tok = demo_tokenizer()
    assert tok.vocab_size == 1024 and tok.bos_id == 1022 and tok.eos_id == tok.pad_id == 1023
    np.testing.assert_array_equal(tok(TEXTS), ref_ids(reference(folder), TEXTS)[0])
