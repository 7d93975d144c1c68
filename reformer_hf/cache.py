"""The generation cache (`past_key_values`) of ReformerForCausalLM.

A causal Reformer decodes token by token from what each attention layer keeps of the prefix:

- local layers keep, per row, the latest `(local_num_chunks_before + 1) * local_attn_chunk_length`
  keys and values of real (non-padding) positions (a ring buffer): a new position sees the
  chunk-aligned window that `local_attention` shows it, counted in real positions, and nothing older.
  Every local layer holds the same positions in the same slots, so which slot holds what, and what
  a step's query sees, is kept and worked out once per step for all of them
  (cache_layers.LocalWindow);
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
read first is written with what it read.  A cache of fixed capacity (`ReformerCache(config,
max_length)`, what generate() creates) allocates all of its buffers at the prefill and never
again, so one compiled or CUDA-graph-captured step can serve every position.  As with
transformers' own caches, compiling is asked for, not done by default: `compileable=True` makes
the cache `is_compileable`, and generate() then compiles its decoding step (on CUDA, or any device
with an explicit `compile_config`); generate() creates such a cache for
`cache_implementation="static"` or a given `compile_config`.  A cache without `max_length`
tracks its length on the host and grows its stores when they fill.

Two configurations cannot be decoded from such state, because a position's attention there
depends on later positions: LSH in "chunk" mode (the paper's; later tokens move the sorted
chunk boundaries, so earlier positions' views change) and local attention with
`local_attn_wrap_around` (the ring of chunks changes with the number of chunks).  For those
the cache keeps the embedded prefix and the prefill's hash rotations and bucket count, and
every step recomputes the full forward pass over the whole sequence: the logits are exactly
those of an uncached pass hashed with the same rotations, at the cost of an uncached pass.
"""

import torch

from .cache_layers import FullLayerCache, LocalLayerCache, LocalWindow, LSHLayerCache, SequenceIndex


def decoding_recomputes(config):
    """Whether cached decoding must rerun the full sequence (see the module docstring)."""
    chunk_lsh = "lsh" in config.attn_layers and config.lsh_window_mode == "chunk"
    wrapped_local = "local" in config.attn_layers and getattr(config, "local_attn_wrap_around", False)
    return chunk_lsh or wrapped_local


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
        # The slots every local layer keeps its keys in (cache_layers.LocalWindow), or None.
        decodes_local = "local" in config.attn_layers and not self.recomputes
        self.local_window = (LocalWindow(config.local_attn_chunk_length, config.local_num_chunks_before,
                                         self.index.fixed) if decodes_local else None)
        self.layers = [self._layer_cache(config, kind) for kind in config.attn_layers]

    def _layer_cache(self, config, kind):
        if kind == "lsh":
            window = config.lsh_num_chunks_before * config.lsh_attn_chunk_length
            return LSHLayerCache(window, keep_buckets=not self.recomputes, index=self.index, capacity=self.max_length)
        if self.recomputes:
            return None
        if kind == "local":
            return LocalLayerCache(self.local_window)
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
        total = sum(part.nbytes() for part in (*self.layers, self.local_window) if part is not None)
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

    def begin_step(self, is_pad):
        """Called by the model before each decoding step's layers, is_pad (batch,): prepares what the
        local layers share (the new position's slot and what its query sees)."""
        if self.local_window is not None:
            self.local_window.begin_step(is_pad)

    def advance(self, new_positions):
        if self.local_window is not None:
            self.local_window.end_pass()
        self.index.advance(new_positions)
        self.is_filled = True

    def reorder_cache(self, beam_idx):
        """Keep batch rows `beam_idx` (beam search): every row of every layer follows its beam, copied into
        the buffers it already has (a compiled step keeps reading them)."""
        self.batch_size = len(beam_idx)
        for part in (*self.layers, self.local_window):
            if part is not None:
                part.reorder(beam_idx)
        if self.embedded is not None:
            self.embedded, self.pad_mask = self.embedded[beam_idx], self.pad_mask[beam_idx]
        return self
