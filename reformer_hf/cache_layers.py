"""The state each attention layer of a ReformerCache keeps, and the in-place writes that keep it
(cache.py describes the design: what each kind keeps and why a step writes as it does)."""

import math

import torch

from .attention_functions import local_window_visible
from .attention_rules import bucket_factors


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


def _nbytes(*tensors):
    """Bytes allocated for the given tensors, None counting nothing."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors if tensor is not None)


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
        return _nbytes(self.keys, self.values)


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
        return self.store.nbytes() + _nbytes(self.key_is_pad)


class LocalWindow:
    """Which real (non-padding) position each slot of the local layers holds: per row, the latest
    `slots = (n_chunks_before + 1) * chunk_length` real positions, real position r in slot r % slots.
    Every local layer of a cache keeps its keys and values in these slots, so one LocalWindow serves
    them all and each decoding step prepares it once (`begin_step`), not once per layer.

    Local attention counts its chunks over a row's real positions (the model moves padding behind
    them, stack_running.real_positions_first), so the window does too: a real position r in chunk
    r // chunk_length sees every real position from the start of chunk r // chunk_length -
    n_chunks_before, at most `n_chunks_before * chunk_length + chunk_length - 1` positions back:
    they all fit.  Padding is never kept: its writes go to one extra slot (the sink, slot `slots`).
    The buffers hold `capacity` slots, `slots + 1` rounded up to a multiple of 16 (the alignment
    fused attention kernels want of a mask), the ones past the sink never used.
    slot_positions: (batch, capacity), the real position a slot holds, -1 where it holds none;
    real_length: (batch,), real positions so far.  For the step under way: new_slot (batch,), where
    the layers write the new position, and attend_bias (batch, capacity), 0 on the slots its query
    sees and -inf elsewhere, in the keys' dtype (an additive attention mask).
    """

    def __init__(self, chunk_length, n_chunks_before, fixed=False):
        self.chunk_length, self.n_chunks_before = chunk_length, n_chunks_before
        self.slots = (n_chunks_before + 1) * chunk_length
        self.capacity = -(-(self.slots + 1) // 16) * 16
        self.fixed = fixed
        self.slot_positions = self.real_length = self.prefill_slot = self.bias_dtype = None
        self.new_slot = self.attend_bias = None

    def prefill(self, pad_mask, like, length):
        """The slot of each of the first `length` positions of a prefill whose real positions come first
        in every row (the sink for the ones not kept): (batch, length).  pad_mask (batch, >= length) or
        None; `like` gives the batch and device.  Worked out by the first local layer, then reused by the
        others until the pass ends (`end_pass`)."""
        if self.prefill_slot is not None:
            return self.prefill_slot
        batch = like.shape[0]
        is_real = ~_pad_flags(pad_mask, like, length)
        real_index = torch.arange(length, device=like.device).expand(batch, -1)
        real_length = is_real.sum(dim=1)
        kept = is_real & (real_index >= real_length[:, None] - self.slots)
        slot = torch.where(kept, real_index % self.slots, self.slots)
        positions = torch.full((batch, self.capacity), -1, dtype=torch.long, device=like.device)
        positions = positions.scatter_(1, slot, torch.where(kept, real_index, -1))
        positions[:, self.slots] = -1
        self.slot_positions = keep_address(positions, self.fixed)
        self.real_length = keep_address(real_length, self.fixed)
        self.prefill_slot, self.bias_dtype = slot, like.dtype
        return slot

    def begin_step(self, is_pad):
        """A new position, is_pad (batch,): its slot (the sink for padding), the window after it is
        written, and the slots its query sees."""
        position = self.real_length.clone()
        self.new_slot = torch.where(is_pad, self.slots, position % self.slots)  # (batch,)
        kept_position = torch.where(is_pad, -1, position)
        self.slot_positions = _put_along(self.slot_positions, 1, self.new_slot[:, None], kept_position[:, None])
        self.real_length.add_((~is_pad).long())
        visible = local_window_visible(self.slot_positions, position, is_pad, self.chunk_length,
                                       self.n_chunks_before)
        no_bias = torch.zeros((), dtype=self.bias_dtype, device=visible.device)
        self.attend_bias = no_bias.masked_fill(~visible, -math.inf)

    def end_pass(self):
        """A pass's scratch goes (the prefill's slots, a step's slot and mask): it is not state, nor, in a
        compiled step, an output of the graph."""
        self.prefill_slot = self.new_slot = self.attend_bias = None

    def reorder(self, batch_index):
        if self.slot_positions is not None:
            self.slot_positions = _select_rows(self.slot_positions, batch_index)
            self.real_length = _select_rows(self.real_length, batch_index)

    def nbytes(self):
        return _nbytes(self.slot_positions, self.real_length)


class LocalLayerCache:
    """One local layer's keys and values in the slots of the cache's `LocalWindow`:
    keys, values (batch, heads, capacity, d_head); a real query never sees the sink or the slots past it."""

    def __init__(self, window):
        self.window = window
        self.prefill_length = 0
        self.keys = self.values = None

    def prefill(self, keys, values, pad_mask):
        """keys, values (batch, heads, padded length, d_head) of a prefill whose real positions come first
        in every row, in order; pad_mask (batch, padded length) or None."""
        batch, heads, _, d_head = keys.shape
        length = self.prefill_length
        slot = self.window.prefill(pad_mask, keys, length)
        index = slot[:, None, :, None].expand(-1, heads, -1, d_head)
        stored = [tensor.new_zeros(batch, heads, self.window.capacity, d_head).scatter_(2, index, tensor[:, :, :length])
                  for tensor in (keys, values)]
        self.keys, self.values = (keep_address(tensor, self.window.fixed) for tensor in stored)

    def append(self, key, value):
        """key, value: (batch, heads, 1, d_head) of the step's new position, into its slot."""
        self.keys = _put_along(self.keys, 2, self.window.new_slot[:, None, None], key)
        self.values = _put_along(self.values, 2, self.window.new_slot[:, None, None], value)

    def reserve(self, capacity):
        """A window: nothing grows with the sequence."""

    def reorder(self, batch_index):
        """The keys and values only: the cache reorders the shared window once."""
        self.keys, self.values = _select_rows(self.keys, batch_index), _select_rows(self.values, batch_index)

    def nbytes(self):
        """The keys and values (the cache counts the shared window once)."""
        return _nbytes(self.keys, self.values)


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
        seen = self._held_at(indices)
        count = self.counts.gather(-1, bucket_ids[..., None])  # (batch, heads, n_hashes, 1)
        is_real = ~is_pad[:, None, None, None]
        newest = is_real & (slots % max(self.window, 1) == count % max(self.window, 1))
        self.ring = _put_along(self.ring, 3, slots, torch.where(newest, position.to(torch.int32), indices))
        self.counts = _put_along(self.counts, 3, bucket_ids[..., None], count + is_real.long())
        return seen

    def bucket_window(self, bucket_ids):
        """What a query of buckets bucket_ids (batch, heads, n_hashes) would see now, as `step` returns it."""
        return self._held_at(self._ring_window(bucket_ids)[1])

    def _held_at(self, indices):
        """Keys, values (batch, heads, n_hashes, window, d_head) at the ring's sequence indices, and whether
        each slot holds one."""
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
        return self.store.nbytes() + _nbytes(self.ring, self.counts, self.rotations)


def _pad_flags(pad_mask, like, length):
    """(batch, length) bool padding flags of the first `length` positions (all False without a mask)."""
    if pad_mask is None:
        return torch.zeros(like.shape[0], length, dtype=torch.bool, device=like.device)
    return pad_mask[:, :length]
