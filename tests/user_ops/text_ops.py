"""A user's text operators: a registered function and a registered class (text -> vector).

Written as a user would: only towhee_rt's public names, the standard library and numpy.
"""
import zlib

import numpy as np

from towhee_rt import Operator, OperatorInputError, Param, TensorSpec, register


@register("test_text.clean", inputs=[TensorSpec("text", "bytes")],
          outputs=[TensorSpec("text", "bytes")])
def clean(text, *, lower=True, max_words=64):
    """One text -> its first ``max_words`` words, single-spaced (and lower-cased)."""
    words = text.split()
    if not words:
        raise OperatorInputError("no words; expected a text with at least one word")
    cleaned = b" ".join(words[:max_words])
    return cleaned.lower() if lower else cleaned


@register("test_text.hashed_words")
class HashedWords(Operator):
    """Texts -> L2-normalised bag-of-words vectors, each word hashed into one of ``dim`` bins."""

    inputs = [TensorSpec("text", "bytes")]
    outputs = [TensorSpec("embedding", "float32", (-1,))]
    params_spec = Operator.params_spec + (Param("dim", (int,), 32, "vector size"),)

    def process_batch(self, batch):
        dim = self.params["dim"]
        vectors = []
        for text in batch["text"]:
            words = (text.encode() if isinstance(text, str) else bytes(text)).split()
            vector = np.zeros(dim, np.float32)
            for word in words:
                vector[zlib.crc32(word) % dim] += 1.0
            vectors.append(vector / max(float(np.linalg.norm(vector)), 1.0))
        return {"embedding": vectors}


@register("test_text.length_and_upper", inputs=[TensorSpec("text", "bytes")],
          outputs=[TensorSpec("length", "int64"), TensorSpec("text", "bytes")])
def length_and_upper(text):
    """Two outputs: the text's length in bytes and the text upper-cased."""
    return len(text), text.upper().decode("utf-8")
