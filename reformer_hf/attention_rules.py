"""What the torch reference (attention_functions.py) and the fused kernels (kernels*.py) must agree on.

The masking constants, the bucket factors of a bucket count, the argument checks of LSH and local
attention, and the head layout of a projection's output.  Both sides import them from here, so
that the reference never has to import the kernels and the kernels never import the reference.
"""

# Masked logits are *replaced* by these values (not added to), in float32.  A finite value
# instead of -inf keeps a row whose keys are all masked finite (a uniform average instead of
# NaN), and lets a query fall back to itself: the self logit sits at -1e5, far below any real
# logit but far above a masked one.
MASK_VALUE = -1e9
SELF_MASK_VALUE = -1e5
KEY_NORM_EPS = 1e-6


def bucket_factors(num_buckets):
    """`num_buckets` as a list of even factors: 8 -> [8]; [4, 8] -> [4, 8] (32 buckets in all)."""
    return list(num_buckets) if isinstance(num_buckets, (list, tuple)) else [num_buckets]


def check_lsh_arguments(query_key, value, bucket_ids, chunk_length, window_mode):
    """`lsh_attention`'s argument checks, the reference's and the fused kernels'."""
    batch, heads, length, _ = query_key.shape
    if length % chunk_length:
        raise ValueError(f"lsh_attention: length={length} must be a multiple of chunk_length={chunk_length}")
    if window_mode not in ("chunk", "bucket_window"):
        raise ValueError(f"lsh_attention: window_mode={window_mode!r}; expected 'chunk' or 'bucket_window'")
    if tuple(value.shape) != tuple(query_key.shape):
        raise ValueError(f"lsh_attention: value has shape {tuple(value.shape)}; expected {tuple(query_key.shape)}")
    if bucket_ids.dim() != 4 or tuple(bucket_ids.shape[:2]) != (batch, heads) or bucket_ids.shape[3] != length:
        raise ValueError(f"lsh_attention: bucket_ids has shape {tuple(bucket_ids.shape)}; "
                         f"expected (batch, heads, n_hashes, length) = ({batch}, {heads}, n_hashes, {length})")


def check_local_arguments(query, key, value, chunk_length):
    """`local_attention`'s argument checks, the reference's and the fused kernel's."""
    length = query.shape[2]
    if length % chunk_length:
        raise ValueError(f"local_attention: length={length} must be a multiple of chunk_length={chunk_length}")
    for name, tensor in (("key", key), ("value", value)):
        if tuple(tensor.shape) != tuple(query.shape):
            raise ValueError(f"local_attention: {name} has shape {tuple(tensor.shape)}; expected {tuple(query.shape)}")


def split_heads(hidden, n_heads, d_head):
    """(batch, length, n_heads * d_head) -> (batch, n_heads, length, d_head)."""
    batch, length = hidden.shape[:2]
    return hidden.view(batch, length, n_heads, d_head).transpose(1, 2)


def merge_heads(hidden):
    """(batch, n_heads, length, d_head) -> (batch, length, n_heads * d_head)."""
    batch, n_heads, length, d_head = hidden.shape
    return hidden.transpose(1, 2).reshape(batch, length, n_heads * d_head)


def unpack_heads(packed, n_parts, n_heads):
    """One projection's output holding `n_parts` projections side by side, (batch, length,
    n_parts * n_heads * d_head) -> n_parts views (batch, n_heads, length, d_head), which share one
    set of strides."""
    parts = head_rows(packed, n_parts, n_heads).unflatten(2, (n_parts, n_heads))
    return tuple(parts[:, :, part].transpose(1, 2) for part in range(n_parts))


def head_rows(packed, n_parts, n_heads):
    """A packed projection's output, its shape checked, viewed as (batch, length, n_parts * n_heads,
    d_head)."""
    if packed.dim() != 3 or packed.shape[-1] % (n_parts * n_heads):
        raise ValueError(f"packed projections have shape {tuple(packed.shape)}; expected (batch, length, "
                         f"{n_parts} * n_heads * d_head) with n_heads={n_heads}")
    return packed.unflatten(-1, (n_parts * n_heads, packed.shape[-1] // (n_parts * n_heads)))
