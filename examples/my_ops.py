"""Two operators of your own, as in docs/operators.md "Your own operators": a function and a class."""
import zlib

import numpy as np

from towhee_rt import Operator, OperatorInputError, Param, TensorSpec, register


@register('my_text.normalize', inputs=[TensorSpec('text', 'bytes')],
          outputs=[TensorSpec('text', 'bytes')])
def normalize(text, *, lower=True):
    """One text (UTF-8 bytes) -> its words, single-spaced (and lower-cased)."""
    if not text.split():
        raise OperatorInputError('no words; expected a text with at least one word')
    text = b' '.join(text.split())
    return text.lower() if lower else text


@register('my_text.hashed_words')
class HashedWords(Operator):
    """Texts -> L2-normalised bag-of-words vectors: each word counts in one of `dim` bins."""

    inputs = [TensorSpec('text', 'bytes')]
    outputs = [TensorSpec('embedding', 'float32', (-1,))]
    params_spec = Operator.params_spec + (Param('dim', (int,), 64, 'vector size'),)

    def process_batch(self, batch):
        vectors = []
        for text in batch['text']:   # str or bytes locally, as you passed it; bytes when served
            words = (text.encode() if isinstance(text, str) else text).split()
            vector = np.zeros(self.params['dim'], np.float32)
            for word in words:
                vector[zlib.crc32(word) % len(vector)] += 1
            vectors.append(vector / max(np.linalg.norm(vector), 1.0))
        return {'embedding': vectors}
