"""The generation cache (`past_key_values`) of ReformerForCausalLM.

A causal Reformer decodes token by token from what each attention layer keeps of the prefix:

- local layers keep, per row, the latest `(local_num_chunks_before + 1) * local_attn_chunk_length`
  keys and values of real (non-padding) positions (a ring buffer): a new position sees the
  chunk-aligned window that `local_attention` shows it, counted in real positions, and nothing older;
- LSH layers in "bucket_window" mode keep every position's normalised key and value once, as a
  dense KV cache does, and per hash round and bucket the sequence indices (int32) of the latest
  `window = lsh_num_chunks_before * lsh_attn_chunk_length` real positions that fell in that
  bucket (a ring per bucket), because that is exactly what `lsh_attention` lets a causal query
  see.  They also keep the hash rotations and the bucket count of the prefill: with
  `hash_seed=None` the rotations are random per pass, and with `num_buckets=None` the count
  depends on the length; decoding goes on hashing as the prefill did.  (A full pass over a
  longer sequence with `num_buckets=None` may pick a larger count; set `num_buckets` in the
  config when cached and uncached generation must agree.)
- full layers keep every key and value.

So a decoding step costs the same whatever the prefix length on local and LSH layers (one
bucket's window per round), and grows linearly only on full layers.  An LSH layer's memory is a
dense layer's KV cache plus its index (`n_hashes * n_buckets * window` int32 per head: with
`num_buckets=None` about 2 * n_hashes * window / chunk_length indices per position, 3-4% of the
keys and values at d_head 128 in bf16); a local layer's is its window.  Reversible layers need
no special state: without a backward pass, decoding runs each layer forward on the new
position's two residual streams.

Two configurations cannot be decoded from such state, because a position's attention there
depends on later positions: LSH in "chunk" mode (the paper's; later tokens move the sorted
chunk boundaries, so earlier positions' views change) and local attention with
`local_attn_wrap_around` (the ring of chunks changes with the number of chunks).  For those
the cache keeps the embedded prefix and the prefill's hash rotations and bucket count, and
every step recomputes the full forward pass over the whole sequence: the logits are exactly
those of an uncached pass hashed with the same rotations, at the cost of an uncached pass.
"""

import math

import torch

from .attention_rules import bucket_factors


def decoding_recomputes(config):
    """Whether cached decoding must rerun the full sequence (see the module docstring)."""
    chunk_lsh = "lsh" in config.attn_layers and config.lsh_window_mode == "chunk"
    wrapped_local = "local" in config.attn_layers and getattr(config, "local_attn_wrap_around", False)
    return chunk_lsh or wrapped_local


def _write(buffer, dim, index, source):
    """`buffer.scatter_(dim, index, source)`, out of place when autograd must see the write."""
    if torch.is_grad_enabled() and (buffer.requires_grad or source.requires_grad):
        return buffer.scatter(dim, index, source)
    return buffer.scatter_(dim, index, source)


class PositionStore:
    """The keys and values of every position so far, each stored once per layer as a dense KV cache
    stores them: keys, values (batch, heads, capacity, d_head), positions 0..length-1 filled.

    `capacity` positions are allocated at the prefill (generate() knows how many it will feed);
    past them the buffers grow by an eighth of their size (at least `GROWTH_MIN` positions), so an
    append copies nothing in the common case and the whole store about eight times over a long
    generation, with at most an eighth of the allocation unused.
    """

    GROWTH_MIN = 64

    def __init__(self, capacity=None):
        self.capacity = capacity
        self.keys = self.values = None
        self.length = 0

    def fill(self, keys, values, length):
        """The first `length` positions of keys, values (batch, heads, >= length, d_head)."""
        room = max(length, self.capacity or 0)
        self.keys, self.values = (
            torch.nn.functional.pad(tensor[:, :, :length], (0, 0, 0, room - length)) for tensor in (keys, values)
        )
        self.length = length

    def append(self, key, value):
        """key, value: (batch, heads, 1, d_head) at sequence index `length`; returns that index."""
        if self.length == self.keys.shape[2]:
            extra = max(self.GROWTH_MIN, self.length // 8)
            self.keys, self.values = (torch.nn.functional.pad(buffer, (0, 0, 0, extra)) for buffer in (self.keys, self.values))
        position = self.length
        self.keys = _write_position(self.keys, position, key)
        self.values = _write_position(self.values, position, value)
        self.length += 1
        return position

    def filled(self):
        """Views of the filled positions: keys, values (batch, heads, length, d_head)."""
        return self.keys[:, :, : self.length], self.values[:, :, : self.length]

    def gather(self, positions):
        """keys, values at `positions` (batch, heads, *shape) of sequence indices -> (batch, heads, *shape, d_head)."""
        batch, heads = positions.shape[:2]
        flat = positions.reshape(batch, heads, -1, 1).expand(-1, -1, -1, self.keys.shape[-1])
        shape = (*positions.shape, self.keys.shape[-1])
        return self.keys.gather(2, flat).view(shape), self.values.gather(2, flat).view(shape)

    def reorder(self, batch_index):
        self.keys, self.values = self.keys[batch_index], self.values[batch_index]

    def nbytes(self):
        return sum(buffer.numel() * buffer.element_size() for buffer in (self.keys, self.values) if buffer is not None)


def _write_position(buffer, position, source):
    """`buffer[:, :, position] = source` (batch, heads, 1, d_head), out of place when autograd must see the
    write; the position is a host integer, so the write needs no index tensor copied to the device."""
    if torch.is_grad_enabled() and (buffer.requires_grad or source.requires_grad):
        return torch.cat([buffer[:, :, :position], source.to(buffer.dtype), buffer[:, :, position + 1 :]], dim=2)
    buffer[:, :, position : position + 1] = source
    return buffer


class FullLayerCache:
    """Every key and value so far (a `PositionStore`) and whether each position is padding,
    key_is_pad (batch, capacity)."""

    def __init__(self, capacity=None):
        self.length = 0
        self.store = PositionStore(capacity)
        self.key_is_pad = None

    def prefill(self, keys, values, pad_mask):
        """Keys and values of the (internally right-padded) prefill; positions past `length` are dropped."""
        self.store.fill(keys, values, self.length)
        self.key_is_pad = torch.nn.functional.pad(_pad_flags(pad_mask, keys, self.length),
                                                  (0, self.store.keys.shape[2] - self.length), value=True)

    def append(self, key, value, is_pad):
        """key, value: (batch, heads, 1, d_head); is_pad: (batch,)."""
        position = self.store.append(key, value)
        if self.key_is_pad.shape[1] < self.store.keys.shape[2]:
            grown = self.store.keys.shape[2] - self.key_is_pad.shape[1]
            self.key_is_pad = torch.nn.functional.pad(self.key_is_pad, (0, grown), value=True)
        self.key_is_pad[:, position] = is_pad
        self.length += 1

    def attended(self):
        """keys, values (batch, heads, length, d_head) and key_is_pad (batch, length) so far."""
        keys, values = self.store.filled()
        return keys, values, self.key_is_pad[:, : self.length]

    def reorder(self, batch_index):
        self.store.reorder(batch_index)
        self.key_is_pad = self.key_is_pad[batch_index]

    def nbytes(self):
        return self.store.nbytes() + self.key_is_pad.numel() * self.key_is_pad.element_size()


class LocalLayerCache:
    """Per row, the keys and values of the latest `slots = (n_chunks_before + 1) * chunk_length` real
    (non-padding) positions, real position r in slot r % slots.

    Local attention counts its chunks over a row's real positions (the model moves padding behind
    them, stack_running.real_positions_first), so the cache does too: a real position r in chunk
    r // chunk_length sees every real position from the start of chunk r // chunk_length -
    n_chunks_before, at most `n_chunks_before * chunk_length + chunk_length - 1` positions back:
    they all fit.  Padding is never stored: its writes go to one extra slot at the end that is
    never read.
    keys, values: (batch, heads, slots + 1, d_head); slot_positions: (batch, slots + 1), the real
    position a slot holds, -1 where it holds none; real_length: (batch,), real positions so far.
    """

    def __init__(self, chunk_length, n_chunks_before):
        self.slots = (n_chunks_before + 1) * chunk_length
        self.length = 0
        self.keys = self.values = self.slot_positions = self.real_length = None

    def prefill(self, keys, values, pad_mask):
        """keys, values (batch, heads, padded length, d_head) of a prefill whose real positions come first
        in every row, in order; pad_mask (batch, padded length) or None."""
        batch, heads, _, d_head = keys.shape
        is_real = ~_pad_flags(pad_mask, keys, self.length)
        real_index = torch.arange(self.length, device=keys.device).expand(batch, -1)
        self.real_length = is_real.sum(dim=1)
        kept = is_real & (real_index >= self.real_length[:, None] - self.slots)
        slot = torch.where(kept, real_index % self.slots, self.slots)  # (batch, length)
        index = slot[:, None, :, None].expand(-1, heads, -1, d_head)
        self.keys = keys.new_zeros(batch, heads, self.slots + 1, d_head).scatter_(2, index, keys[:, :, : self.length])
        self.values = values.new_zeros(batch, heads, self.slots + 1, d_head).scatter_(
            2, index, values[:, :, : self.length]
        )
        positions = torch.full((batch, self.slots + 1), -1, dtype=torch.long, device=keys.device)
        self.slot_positions = positions.scatter_(1, slot, torch.where(kept, real_index, -1))
        self.slot_positions[:, self.slots] = -1

    def append(self, key, value, is_pad):
        """key, value: (batch, heads, 1, d_head); is_pad: (batch,).  Returns the new position's real
        position per row (batch,), the one it attends from."""
        batch, heads, _, d_head = key.shape
        position = self.real_length
        slot = torch.where(is_pad, self.slots, position % self.slots)  # (batch,)
        index = slot[:, None, None, None].expand(-1, heads, 1, d_head)
        self.keys = _write(self.keys, 2, index, key)
        self.values = _write(self.values, 2, index, value)
        self.slot_positions = self.slot_positions.scatter(1, slot[:, None], torch.where(is_pad, -1, position)[:, None])
        self.real_length = position + (~is_pad).long()
        self.length += 1
        return position

    def reorder(self, batch_index):
        self.keys, self.values = self.keys[batch_index], self.values[batch_index]
        self.slot_positions, self.real_length = self.slot_positions[batch_index], self.real_length[batch_index]

    def nbytes(self):
        held = (self.keys, self.values, self.slot_positions, self.real_length)
        return sum(tensor.numel() * tensor.element_size() for tensor in held if tensor is not None)


class LSHLayerCache:
    """The prefill's hashing and, with `keep_buckets`, every position's key and value stored once
    (a `PositionStore`) with, per hash round and bucket, the sequence indices of the latest `window`
    real positions that fell in it.

    rotations: (heads, d_head, n_hashes, rotation_size); num_buckets: an int or a factor pair.
    ring: (batch, heads, n_hashes, n_buckets * window + 1) int32: bucket b of round r keeps the
    sequence index of its j-th position (counting from 0 in position order) in slot b * window +
    j % window, -1 where a slot holds none; the one extra slot at the end takes the writes of padding
    positions and is never read.  counts: (batch, heads, n_hashes, n_buckets), real positions that
    have fallen in each bucket.  The keys are the normalised shared query-keys, so the store holds
    what a dense layer's KV cache holds; the ring adds 4 bytes per kept index.
    """

    def __init__(self, window, keep_buckets, capacity=None):
        self.window = window
        self.keep_buckets = keep_buckets
        self.length = 0
        self.rotations = self.num_buckets = self.n_buckets = None
        self.store = PositionStore(capacity)
        self.ring = self.counts = None

    def prefill(self, rotations, num_buckets, keys, values, bucket_ids, pad_mask):
        """keys: normalised (batch, heads, length, d_head); bucket_ids (batch, heads, n_hashes, length)."""
        self.rotations, self.num_buckets = rotations, num_buckets
        self.n_buckets = math.prod(bucket_factors(num_buckets))
        if not self.keep_buckets:
            return
        batch, heads, n_hashes, length = bucket_ids.shape
        n_buckets, window = self.n_buckets, self.window
        sink = n_buckets * window
        # Positions past `length` (the internal right padding) and padding go to bucket n_buckets, never kept.
        is_pad = _pad_flags(pad_mask, keys, self.length)
        is_pad = torch.nn.functional.pad(is_pad, (0, length - self.length), value=True)
        bucket_ids = bucket_ids.masked_fill(is_pad[:, None, None, :], n_buckets)

        positions = torch.arange(length, device=keys.device)
        sorted_positions = (bucket_ids * length + positions).argsort(dim=-1)  # by (bucket, position)
        sorted_buckets = bucket_ids.gather(-1, sorted_positions)
        counts = torch.zeros(batch, heads, n_hashes, n_buckets + 1, dtype=torch.long, device=keys.device)
        counts.scatter_add_(-1, bucket_ids, torch.ones_like(bucket_ids))
        bucket_starts = counts.cumsum(-1) - counts
        rank_in_bucket = positions - bucket_starts.gather(-1, sorted_buckets)
        kept = (sorted_buckets < n_buckets) & (rank_in_bucket >= counts.gather(-1, sorted_buckets) - window)
        slots = torch.where(kept, sorted_buckets * window + rank_in_bucket % max(window, 1), sink)
        ring = torch.full((batch, heads, n_hashes, sink + 1), -1, dtype=torch.int32, device=keys.device)
        self.ring = ring.scatter_(-1, slots, torch.where(kept, sorted_positions, -1).to(torch.int32))
        self.ring[..., sink] = -1
        self.counts = counts[..., :n_buckets]
        self.store.fill(keys, values, self.length)

    def bucket_window(self, bucket_ids):
        """Keys, values (batch, heads, n_hashes, window, d_head) and validity of each round's bucket."""
        offsets = torch.arange(self.window, device=bucket_ids.device)
        indices = self.ring.gather(-1, bucket_ids[..., None] * self.window + offsets)  # (b, h, n_hashes, window)
        valid = indices >= 0
        keys, values = self.store.gather(indices.clamp(min=0).long())
        return keys, values, valid

    def append(self, key, value, bucket_ids, is_pad):
        """key (normalised), value: (batch, heads, 1, d_head); bucket_ids (batch, heads, n_hashes); is_pad (batch,)."""
        position = self.store.append(key, value)
        count = self.counts.gather(-1, bucket_ids[..., None])[..., 0]
        slot = bucket_ids * self.window + count % max(self.window, 1)
        slot = torch.where(is_pad[:, None, None] | (self.window == 0), self.n_buckets * self.window, slot)
        self.ring = self.ring.scatter(-1, slot[..., None], torch.full_like(slot[..., None], position, dtype=torch.int32))
        self.ring[..., self.n_buckets * self.window] = -1
        added = (~is_pad).long()[:, None, None, None].expand(-1, *bucket_ids.shape[1:], 1)
        self.counts = self.counts.scatter_add(-1, bucket_ids[..., None], added)
        self.length += 1

    def reorder(self, batch_index):
        if self.ring is not None:
            self.store.reorder(batch_index)
            self.ring, self.counts = self.ring[batch_index], self.counts[batch_index]

    def nbytes(self):
        held = [tensor for tensor in (self.ring, self.counts, self.rotations) if tensor is not None]
        return self.store.nbytes() + sum(tensor.numel() * tensor.element_size() for tensor in held)


def _pad_flags(pad_mask, like, length):
    """(batch, length) bool padding flags of the first `length` positions (all False without a mask)."""
    if pad_mask is None:
        return torch.zeros(like.shape[0], length, dtype=torch.bool, device=like.device)
    return pad_mask[:, :length]


class ReformerCache:
    """`past_key_values` of ReformerForCausalLM: one layer cache per attention layer.

    Created empty by generate() (sized for the positions it will feed), by the model, or by the
    caller: `ReformerCache(config, max_length=None)`; `max_length` positions of every full and LSH
    layer are allocated at the prefill, and the stores grow past it when needed.  The first forward
    pass that receives it fills it (the prefill), later passes decode from it.  `generate()` uses it
    through `get_seq_length` and, for beam search, `reorder_cache`.  It holds tensors of one batch,
    device and dtype.  Pass `use_cache=False` to `generate` to recompute every step instead.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, config, max_length=None):
        self.max_length = max_length
        self.recomputes = decoding_recomputes(config)
        self.seq_length = 0
        self.batch_size = None
        # Recomputing caches keep the embedded sequence (batch, length, hidden_size) and its padding.
        self.embedded = self.pad_mask = None
        self.layers = [self._layer_cache(config, kind) for kind in config.attn_layers]

    def _layer_cache(self, config, kind):
        if kind == "lsh":
            window = config.lsh_num_chunks_before * config.lsh_attn_chunk_length
            return LSHLayerCache(window, keep_buckets=not self.recomputes, capacity=self.max_length)
        if self.recomputes:
            return None
        if kind == "local":
            return LocalLayerCache(config.local_attn_chunk_length, config.local_num_chunks_before)
        return FullLayerCache(self.max_length)

    def nbytes(self):
        """Bytes of the tensors the cache holds (allocated, as measured: every layer's store, rings,
        counts and rotations, and a recomputing cache's embedded sequence)."""
        total = sum(layer.nbytes() for layer in self.layers if layer is not None)
        held = [tensor for tensor in (self.embedded, self.pad_mask) if tensor is not None]
        return total + sum(tensor.numel() * tensor.element_size() for tensor in held)

    def __len__(self):
        return len(self.layers)

    def get_seq_length(self, layer_idx=0):
        """Positions seen so far, padding included (the sequence index of the next position)."""
        return self.seq_length

    def begin_prefill(self, embedded, pad_mask):
        """Called by the model before the prefill pass over `embedded` (batch, length, hidden_size),
        padding flags `pad_mask` (batch, length) or None; a recomputing cache keeps both."""
        if self.seq_length:
            raise ValueError(f"ReformerCache already holds {self.seq_length} positions; it cannot be prefilled again.")
        batch_size, length = embedded.shape[:2]
        self.batch_size = batch_size
        for layer in self.layers:
            if layer is not None:
                layer.length = length
        if self.recomputes:
            no_padding = torch.zeros(batch_size, length, dtype=torch.bool, device=embedded.device)
            self.extend_sequence(embedded, pad_mask if pad_mask is not None else no_padding)

    def extend_sequence(self, embedded, pad_mask):
        """Recomputing caches: append (batch, new, hidden_size) and its padding flags; return the whole sequence."""
        if self.embedded is not None:
            embedded = torch.cat([self.embedded, embedded], dim=1)
            pad_mask = torch.cat([self.pad_mask, pad_mask], dim=1)
        self.embedded, self.pad_mask = embedded, pad_mask
        return embedded, pad_mask

    def advance(self, new_positions):
        self.seq_length += new_positions

    def reorder_cache(self, beam_idx):
        """Keep batch rows `beam_idx` (beam search): every row of every layer follows its beam."""
        self.batch_size = len(beam_idx)
        for layer in self.layers:
            if layer is not None:
                layer.reorder(beam_idx)
        if self.embedded is not None:
            self.embedded, self.pad_mask = self.embedded[beam_idx], self.pad_mask[beam_idx]
        return self
