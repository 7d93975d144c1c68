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

A decoding step reads no number on the host that changes from step to step: the sequence index
of the next position is a device tensor (`SequenceIndex`), and every write goes into the
existing buffers in place (scatter_ eagerly, index_put_ under torch.compile) at indices computed
on the device.  A compiled write stays in place only if nothing reads the buffer's old contents
after it (inductor reorders the functional graph it traces, then turns index_put back into
index_put_ where it can): so a step writes a store before reading it, and a ring or count it must
read first is written with what it read.  A cache of fixed capacity (`ReformerCache(config, max_length)`, what generate() creates) allocates all of
its buffers at the prefill and never again, so one compiled or CUDA-graph-captured step can serve
every position.  As with transformers' own caches, compiling is asked for, not done by default:
`compileable=True` makes the cache `is_compileable`, and generate() then compiles its decoding
step (on CUDA, or any device with an explicit `compile_config`); generate() creates such a cache
for `cache_implementation="static"` or a given `compile_config`.  A cache without `max_length`
tracks its length on the host and grows its stores when they fill.

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


def _autograd_sees(buffer, source):
    """Whether a write of `source` into `buffer` must be out of place, for autograd to follow it."""
    return torch.is_grad_enabled() and (buffer.requires_grad or source.requires_grad)


def _put_along(buffer, dim, index, source):
    """`source` written at the indices `index` along `dim` of `buffer`, every other leading dimension
    taken whole: index broadcastable to buffer.shape[:dim] + (n,), source of that broadcast shape followed
    by buffer.shape[dim + 1:].  Out of place when autograd must see the write (with a copy of the index:
    the cache's own sequence index moves on in place).

    Eagerly one scatter_ kernel.  Under torch.compile an index_put_ over broadcast aranges instead: the
    form inductor keeps in place, where it lowers a scatter_ as a copy of the whole buffer."""
    source = source.to(buffer.dtype)
    axes = dim + 1
    index = index.view([1] * (axes - index.dim()) + list(index.shape))
    if _autograd_sees(buffer, source):
        index = index.clone()
        put, scatter = buffer.index_put, buffer.scatter
    else:
        put, scatter = buffer.index_put_, buffer.scatter_
    if not torch.compiler.is_compiling():
        return scatter(dim, index.view(*index.shape, *[1] * (buffer.dim() - axes)).expand(source.shape), source)
    leading = [torch.arange(size, device=index.device).view([size if axis == place else 1 for axis in range(axes)])
               for place, size in enumerate(buffer.shape[:dim])]
    return put((*leading, index), source)


def _select_rows(buffer, batch_index):
    """Rows `batch_index` of `buffer`, copied into its own storage when the batch keeps its size, so that
    a compiled step goes on reading the same buffers after beam search reorders them."""
    chosen = buffer.index_select(0, batch_index)
    return buffer.copy_(chosen) if chosen.shape == buffer.shape else chosen


class SequenceIndex:
    """The sequence index of the next position, shared by every layer of one ReformerCache.

    next: (1,) long tensor on the cache's device, advanced in place after each pass.  host: the same
    as an int for a growing cache (its stores reallocate when full, which the host decides); None
    for a cache of fixed capacity, which keeps it on the device only, so that no step reads a
    Python number that changes (a compiled step would be specialised on it).
    """

    def __init__(self, fixed):
        self.fixed = fixed
        self.next = None
        self.host = None if fixed else 0

    def start(self, device):
        self.next = keep_address(torch.zeros(1, dtype=torch.long, device=device), self.fixed)

    def advance(self, new_positions):
        self.next.add_(new_positions)
        if self.host is not None:
            self.host += new_positions

    def length(self):
        """Positions so far as an int (read from the device for a fixed-capacity cache: one synchronisation)."""
        if self.host is not None or self.next is None:
            return self.host or 0
        return int(self.next.item())


def keep_address(tensor, fixed):
    """Mark a fixed-capacity cache's buffer as living at one address for its whole life, so that a
    CUDA-graph-compiled step reads and writes it in place instead of copying it in on every replay
    (torch._dynamo.mark_static_address, as transformers' StaticCache does)."""
    if fixed and not torch.compiler.is_compiling():
        torch._dynamo.mark_static_address(tensor)
    return tensor


class PositionStore:
    """The keys and values of every position so far, each stored once per layer as a dense KV cache
    stores them: keys, values (batch, heads, capacity, d_head), positions 0..length-1 filled.

    A fixed-capacity cache allocates `capacity` positions at the prefill and writes each new
    position at the device index `index.next`.  A growing cache (capacity None) allocates the
    prefill's positions and, past them, grows the buffers by an eighth of their size (at least
    `GROWTH_MIN` positions), so an append copies nothing in the common case and the whole store
    about eight times over a long generation, with at most an eighth of the allocation unused.
    """

    GROWTH_MIN = 64

    def __init__(self, index, capacity=None):
        self.index = index
        self.capacity = capacity
        self.keys = self.values = None

    def fill(self, keys, values, length):
        """The first `length` positions of keys, values (batch, heads, >= length, d_head)."""
        room = max(length, self.capacity or 0)
        self.keys, self.values = (
            keep_address(torch.nn.functional.pad(tensor[:, :, :length], (0, 0, 0, room - length)), self.index.fixed)
            for tensor in (keys, values)
        )

    def reserve(self, capacity):
        """Room for `capacity` positions (a fixed-capacity cache asked for more: new buffers, once)."""
        self.capacity = capacity
        if self.keys is not None and self.keys.shape[2] < capacity:
            extra = capacity - self.keys.shape[2]
            self.keys, self.values = (keep_address(torch.nn.functional.pad(buffer, (0, 0, 0, extra)), self.index.fixed)
                                      for buffer in (self.keys, self.values))

    def append(self, key, value):
        """key, value: (batch, heads, 1, d_head) at the next sequence index; returns that index (1,)."""
        if self.index.host is not None and self.index.host == self.keys.shape[2]:
            extra = max(self.GROWTH_MIN, self.index.host // 8)
            self.keys, self.values = (torch.nn.functional.pad(buffer, (0, 0, 0, extra)) for buffer in (self.keys, self.values))
        self.keys = _put_along(self.keys, 2, self.index.next, key)
        self.values = _put_along(self.values, 2, self.index.next, value)
        return self.index.next

    def gather(self, positions):
        """keys, values at `positions` (batch, heads, *shape) of sequence indices -> (batch, heads, *shape, d_head)."""
        batch, heads = positions.shape[:2]
        flat = positions.reshape(batch, heads, -1, 1).expand(-1, -1, -1, self.keys.shape[-1])
        shape = (*positions.shape, self.keys.shape[-1])
        return self.keys.gather(2, flat).view(shape), self.values.gather(2, flat).view(shape)

    def reorder(self, batch_index):
        self.keys, self.values = _select_rows(self.keys, batch_index), _select_rows(self.values, batch_index)

    def nbytes(self):
        return sum(buffer.numel() * buffer.element_size() for buffer in (self.keys, self.values) if buffer is not None)


class FullLayerCache:
    """Every key and value so far (a `PositionStore`) and whether each position is padding,
    key_is_pad (batch, capacity): True also for the positions not yet written, so that a step
    attends over the whole allocation and its shapes do not change from step to step."""

    def __init__(self, index, capacity=None):
        self.prefill_length = 0
        self.store = PositionStore(index, capacity)
        self.key_is_pad = None

    def prefill(self, keys, values, pad_mask):
        """Keys and values of the (internally right-padded) prefill; positions past `prefill_length` are dropped."""
        length = self.prefill_length
        self.store.fill(keys, values, length)
        flags = torch.nn.functional.pad(_pad_flags(pad_mask, keys, length), (0, self.store.keys.shape[2] - length),
                                        value=True)
        self.key_is_pad = keep_address(flags, self.store.index.fixed)

    def append(self, key, value, is_pad):
        """key, value: (batch, heads, 1, d_head); is_pad: (batch,)."""
        position = self.store.append(key, value)
        if self.key_is_pad.shape[1] < self.store.keys.shape[2]:
            grown = self.store.keys.shape[2] - self.key_is_pad.shape[1]
            self.key_is_pad = torch.nn.functional.pad(self.key_is_pad, (0, grown), value=True)
        self.key_is_pad = _put_along(self.key_is_pad, 1, position, is_pad[:, None])

    def reserve(self, capacity):
        self.store.reserve(capacity)
        if self.key_is_pad is not None and self.key_is_pad.shape[1] < capacity:
            grown = torch.nn.functional.pad(self.key_is_pad, (0, capacity - self.key_is_pad.shape[1]), value=True)
            self.key_is_pad = keep_address(grown, self.store.index.fixed)

    def attended(self):
        """keys, values (batch, heads, capacity, d_head) and key_is_pad (batch, capacity), True past the
        positions written so far."""
        return self.store.keys, self.store.values, self.key_is_pad

    def reorder(self, batch_index):
        self.store.reorder(batch_index)
        self.key_is_pad = _select_rows(self.key_is_pad, batch_index)

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

    def __init__(self, chunk_length, n_chunks_before, fixed=False):
        self.slots = (n_chunks_before + 1) * chunk_length
        self.fixed = fixed
        self.prefill_length = 0
        self.keys = self.values = self.slot_positions = self.real_length = None

    def prefill(self, keys, values, pad_mask):
        """keys, values (batch, heads, padded length, d_head) of a prefill whose real positions come first
        in every row, in order; pad_mask (batch, padded length) or None."""
        batch, heads, _, d_head = keys.shape
        length = self.prefill_length
        is_real = ~_pad_flags(pad_mask, keys, length)
        real_index = torch.arange(length, device=keys.device).expand(batch, -1)
        real_length = is_real.sum(dim=1)
        kept = is_real & (real_index >= real_length[:, None] - self.slots)
        slot = torch.where(kept, real_index % self.slots, self.slots)  # (batch, length)
        index = slot[:, None, :, None].expand(-1, heads, -1, d_head)
        window_keys = keys.new_zeros(batch, heads, self.slots + 1, d_head).scatter_(2, index, keys[:, :, :length])
        window_values = values.new_zeros(batch, heads, self.slots + 1, d_head).scatter_(2, index, values[:, :, :length])
        positions = torch.full((batch, self.slots + 1), -1, dtype=torch.long, device=keys.device)
        positions = positions.scatter_(1, slot, torch.where(kept, real_index, -1))
        positions[:, self.slots] = -1
        self.keys, self.values, self.slot_positions, self.real_length = (
            keep_address(tensor, self.fixed) for tensor in (window_keys, window_values, positions, real_length)
        )

    def append(self, key, value, is_pad):
        """key, value: (batch, heads, 1, d_head); is_pad: (batch,).  Returns the new position's real
        position per row (batch,), the one it attends from."""
        position = self.real_length.clone()
        slot = torch.where(is_pad, self.slots, position % self.slots)  # (batch,)
        self.keys = _put_along(self.keys, 2, slot[:, None, None], key)
        self.values = _put_along(self.values, 2, slot[:, None, None], value)
        kept_position = torch.where(is_pad, -1, position)
        self.slot_positions = _put_along(self.slot_positions, 1, slot[:, None], kept_position[:, None])
        self.real_length.add_((~is_pad).long())
        return position

    def reserve(self, capacity):
        """A window: nothing grows with the sequence."""

    def reorder(self, batch_index):
        self.keys, self.values = _select_rows(self.keys, batch_index), _select_rows(self.values, batch_index)
        self.slot_positions = _select_rows(self.slot_positions, batch_index)
        self.real_length = _select_rows(self.real_length, batch_index)

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
    j % window, -1 where a slot holds none; the one extra slot at the end takes the prefill's writes of
    the positions not kept and is never read.  counts: (batch, heads, n_hashes, n_buckets), real positions that
    have fallen in each bucket.  The keys are the normalised shared query-keys, so the store holds
    what a dense layer's KV cache holds; the ring adds 4 bytes per kept index.
    """

    def __init__(self, window, keep_buckets, index, capacity=None):
        self.window = window
        self.keep_buckets = keep_buckets
        self.prefill_length = 0
        self.rotations = self.num_buckets = self.n_buckets = None
        self.store = PositionStore(index, capacity)
        self.ring = self.counts = None

    def prefill(self, rotations, num_buckets, keys, values, bucket_ids, pad_mask):
        """keys: normalised (batch, heads, length, d_head); bucket_ids (batch, heads, n_hashes, length)."""
        fixed = self.store.index.fixed
        self.rotations, self.num_buckets = keep_address(rotations, fixed), num_buckets
        self.n_buckets = math.prod(bucket_factors(num_buckets))
        if not self.keep_buckets:
            return
        batch, heads, n_hashes, length = bucket_ids.shape
        n_buckets, window, kept_length = self.n_buckets, self.window, self.prefill_length
        sink = n_buckets * window
        # Positions past `prefill_length` (the internal right padding) and padding go to bucket n_buckets, never kept.
        is_pad = _pad_flags(pad_mask, keys, kept_length)
        is_pad = torch.nn.functional.pad(is_pad, (0, length - kept_length), value=True)
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
        ring = ring.scatter_(-1, slots, torch.where(kept, sorted_positions, -1).to(torch.int32))
        ring[..., sink] = -1
        self.ring = keep_address(ring, fixed)
        self.counts = keep_address(counts[..., :n_buckets].contiguous(), fixed)
        self.store.fill(keys, values, kept_length)

    def step(self, key, value, bucket_ids, is_pad):
        """One new position: key (normalised), value (batch, heads, 1, d_head), its buckets bucket_ids
        (batch, heads, n_hashes) and is_pad (batch,).  Stores it, and returns what its query sees of each
        round's bucket before it: keys, values (batch, heads, n_hashes, window, d_head) and their validity
        (batch, heads, n_hashes, window).

        The store is written before it is read, and the ring's and counts' new contents are computed
        from what was read of them, so that no read of a buffer's old contents can follow its write
        (the condition for a compiled step to write in place; see the module docstring)."""
        position = self.store.append(key, value)
        slots, indices = self._ring_window(bucket_ids)
        keys, values = self.store.gather(indices.clamp(min=0).long())
        count = self.counts.gather(-1, bucket_ids[..., None])  # (batch, heads, n_hashes, 1)
        is_real = ~is_pad[:, None, None, None]
        newest = is_real & (slots % max(self.window, 1) == count % max(self.window, 1))
        self.ring = _put_along(self.ring, 3, slots, torch.where(newest, position.to(torch.int32), indices))
        self.counts = _put_along(self.counts, 3, bucket_ids[..., None], count + is_real.long())
        return keys, values, indices >= 0

    def bucket_window(self, bucket_ids):
        """What a query of buckets bucket_ids (batch, heads, n_hashes) would see now, as `step` returns it."""
        _, indices = self._ring_window(bucket_ids)
        keys, values = self.store.gather(indices.clamp(min=0).long())
        return keys, values, indices >= 0

    def _ring_window(self, bucket_ids):
        """The ring slots of each round's bucket and the sequence indices they hold, both (batch, heads,
        n_hashes, window)."""
        slots = bucket_ids[..., None] * self.window + torch.arange(self.window, device=bucket_ids.device)
        return slots, self.ring.gather(-1, slots)

    def reserve(self, capacity):
        self.store.reserve(capacity)

    def reorder(self, batch_index):
        if self.ring is not None:
            self.store.reorder(batch_index)
            self.ring, self.counts = _select_rows(self.ring, batch_index), _select_rows(self.counts, batch_index)

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

    `ReformerCache(config, max_length=None, compileable=False)`.  With `max_length` (what generate()
    creates, sized for every position it will feed) every full and LSH layer allocates that many
    positions at the prefill and nothing more: the cache has a fixed capacity, keeps its length on
    the device, and a decoding step can be compiled (static shapes, in-place writes, no host read);
    `compileable=True` (which needs `max_length`) tells generate() to compile it.  Without
    `max_length` the cache counts on the host and its stores grow when full.  The first forward pass that receives
    it fills it (the prefill), later passes decode from it.  `generate()` uses it through
    `get_seq_length`, `is_compileable` and, for beam search, `reorder_cache` (in place).  It holds
    tensors of one batch, device and dtype.  Pass `use_cache=False` to `generate` to recompute
    every step instead.
    """

    is_croppable = False

    def __init__(self, config, max_length=None, compileable=False):
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 1):
            raise ValueError(f"ReformerCache: max_length must be a positive int or None (a growing cache), "
                             f"got {max_length!r}.")
        if not isinstance(compileable, bool) or (compileable and max_length is None):
            raise ValueError(f"ReformerCache: compileable={compileable!r} with max_length={max_length!r}: a "
                             "compiled decoding step needs a fixed capacity (compileable=True with an int "
                             "max_length), or compileable=False.")
        self.max_length = max_length
        self.compileable = compileable
        self.recomputes = decoding_recomputes(config)
        self.index = SequenceIndex(fixed=max_length is not None)
        self.is_filled = False
        self.batch_size = None
        # Recomputing caches keep the embedded sequence (batch, length, hidden_size) and its padding.
        self.embedded = self.pad_mask = None
        self.layers = [self._layer_cache(config, kind) for kind in config.attn_layers]

    def _layer_cache(self, config, kind):
        if kind == "lsh":
            window = config.lsh_num_chunks_before * config.lsh_attn_chunk_length
            return LSHLayerCache(window, keep_buckets=not self.recomputes, index=self.index, capacity=self.max_length)
        if self.recomputes:
            return None
        if kind == "local":
            return LocalLayerCache(config.local_attn_chunk_length, config.local_num_chunks_before, self.index.fixed)
        return FullLayerCache(self.index, self.max_length)

    @property
    def is_compileable(self):
        """Whether generate() compiles the decoding step into one static graph (transformers reads it):
        asked for (`compileable`), with a fixed capacity and layers that decode from their state
        rather than recompute."""
        return self.compileable and self.max_length is not None and not self.recomputes

    def nbytes(self):
        """Bytes of the tensors the cache holds (allocated, as measured: every layer's store, rings,
        counts and rotations, the sequence index, and a recomputing cache's embedded sequence)."""
        total = sum(layer.nbytes() for layer in self.layers if layer is not None)
        held = [tensor for tensor in (self.embedded, self.pad_mask, self.index.next) if tensor is not None]
        return total + sum(tensor.numel() * tensor.element_size() for tensor in held)

    def __len__(self):
        return len(self.layers)

    def get_seq_length(self, layer_idx=0):
        """Positions seen so far, padding included (the sequence index of the next position), as an int.
        A fixed-capacity cache keeps the count on the device: reading it here waits for the device
        (generate() reads it before the prefill; a decoding step never does)."""
        return self.index.length()

    def known_length(self):
        """get_seq_length() where the host knows it without asking the device (an empty cache, a growing
        one); None for a filled fixed-capacity cache."""
        return 0 if not self.is_filled else self.index.host

    def past_length_for(self, total_length, fed_length=None):
        """The positions held, for generate(), which feeds a sequence of `total_length` positions: the host's
        count where it keeps one, else `total_length - fed_length` (`fed_length`: the positions generate()
        says it feeds next, 1 in a decoding step), else read from the device (a resumed generation's first
        step).  ValueError if the sequence outgrows a fixed capacity."""
        if self.max_length is not None and total_length > self.max_length:
            raise ValueError(f"generate: the sequence has {total_length} positions but the ReformerCache holds at most "
                             f"max_length={self.max_length}; pass a larger cache or none.")
        known = self.known_length()
        if known is None:
            known = total_length - fed_length if fed_length is not None else self.get_seq_length()
        return known

    def next_positions(self, length, device):
        """(length,) sequence indices of the next `length` positions (computed on the device where only the
        device knows the length)."""
        known = self.known_length()
        start = known if known is not None else self.index.next
        return torch.arange(length, device=device) + start

    def confirm_positions(self, claimed, message):
        """Whether `claimed` (length,) are the sequence indices of the next positions: True or False where
        the host can tell without waiting for a device (on the CPU outside torch.compile); None where the
        device asserts it instead, stopping the run with `message` if they are not."""
        expected = self.next_positions(claimed.shape[-1], claimed.device)
        if claimed.shape != expected.shape:
            return False
        same = (claimed == expected).all()
        if torch.compiler.is_compiling() or same.device.type != "cpu":
            torch._assert_async(same, message)
            return None
        return bool(same)

    def reserve(self, max_length):
        """Make a fixed-capacity cache hold at least `max_length` positions (generate() asks for what it will
        feed when it continues a cache it was given): its full and LSH stores are reallocated once, so a
        compiled step is compiled again for the new shapes.  A growing cache grows by itself."""
        if self.max_length is None or max_length <= self.max_length:
            return
        self.max_length = max_length
        for layer in self.layers:
            if layer is not None:
                layer.reserve(max_length)

    def check_room(self, new_positions):
        """Refuse positions past a fixed capacity: ValueError where the host can tell at no cost (it knows
        the length, or the cache is on the CPU outside torch.compile), else a device assertion that
        stops the run (no synchronisation)."""
        if self.max_length is None:
            return
        known = self.known_length()
        if known is None and self.index.next.device.type == "cpu" and not torch.compiler.is_compiling():
            known = self.get_seq_length()
        if known is None:
            # A constant message: under torch.compile with dynamic shapes the sizes may be symbolic.
            torch._assert_async((self.index.next + new_positions <= self.max_length).all(),
                                "ReformerCache: the new positions do not fit the cache's max_length")
        elif known + new_positions > self.max_length:
            raise ValueError(f"ReformerCache: {new_positions} more position(s) do not fit a cache of max_length="
                             f"{self.max_length} (it holds {known}); create it with a larger max_length or reserve() "
                             "more.")

    def begin_prefill(self, embedded, pad_mask):
        """Called by the model before the prefill pass over `embedded` (batch, length, hidden_size),
        padding flags `pad_mask` (batch, length) or None; a recomputing cache keeps both."""
        if self.is_filled:
            raise ValueError(f"ReformerCache already holds {self.get_seq_length()} positions; it cannot be "
                             "prefilled again.")
        batch_size, length = embedded.shape[:2]
        self.check_room(length)
        self.batch_size = batch_size
        self.index.start(embedded.device)
        for layer in self.layers:
            if layer is not None:
                layer.prefill_length = length
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
        self.index.advance(new_positions)
        self.is_filled = True

    def reorder_cache(self, beam_idx):
        """Keep batch rows `beam_idx` (beam search): every row of every layer follows its beam, copied into
        the buffers it already has (a compiled step keeps reading them)."""
        self.batch_size = len(beam_idx)
        for layer in self.layers:
            if layer is not None:
                layer.reorder(beam_idx)
        if self.embedded is not None:
            self.embedded, self.pad_mask = self.embedded[beam_idx], self.pad_mask[beam_idx]
        return self
