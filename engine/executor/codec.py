"""A small explicit binary encoding of the step types (`engine.step`), for the engine -> worker channel.

No pickle: a decoder that can only build `SchedulerOutput`, `NewSeq`, `CachedSeq` and `SamplingOptions` from
ints, floats and strings cannot be made to run code, whatever bytes it gets. Little-endian throughout:

    step      := u32 n, seq * n, strs finished_ids, strs preempted_ids, i64 * 4 (the step statistics)
    seq       := u8 0, str id, ints token_ids, i64 num_prompt, ints block_ids, i64 start, i64 num_new,
                 u8 sample, sampling                                               (a NewSeq)
               | u8 1, str id, ints new_token_ids, ints new_block_ids, i64 start, i64 num_new, u8 sample
    sampling  := f64 temperature, int top_k, f64 top_p, f64 min_p, f64 presence, f64 frequency,
                 f64 repetition, opt-int seed, opt-int logprobs, opt-int prompt_logprobs, int min_tokens,
                 ints forbidden_ids
    ints      := u32 n, i64 * n          str := u32 n, n bytes of UTF-8       strs := u32 n, str * n
    int       := u8 n, n bytes (two's complement: any Python int, e.g. a seed of 2**63 + i)
    opt-int   := u8 0 | u8 1, int

Token and block ids are i64 arrays (one `array` copy to encode, one `struct.unpack_from` to decode); the
rest is a few struct calls per sequence.
"""

from __future__ import annotations

import struct
from array import array

from ..step import CachedSeq, NewSeq, SamplingOptions, SchedulerOutput

_U8, _U32, _I64, _F64 = struct.Struct("<B"), struct.Struct("<I"), struct.Struct("<q"), struct.Struct("<d")
_CACHED_TAIL = struct.Struct("<qqB")  # start, num_new, sample
_NEW_MID = struct.Struct("<q")
_FLOATS3 = struct.Struct("<ddd")
_FLOATS4 = struct.Struct("<dddd")
_STATS = struct.Struct("<qqqq")
_NEW, _CACHED = 0, 1


class DecodeError(ValueError):
    """The bytes are not an encoded step (truncated, or not ours)."""


# ---- encoding -----------------------------------------------------------------------------------------------
def _ints(out: bytearray, values) -> None:
    out += _U32.pack(len(values))
    out += array("q", values).tobytes()


def _str(out: bytearray, s: str) -> None:
    b = s.encode()
    out += _U32.pack(len(b))
    out += b


def _strs(out: bytearray, values) -> None:
    out += _U32.pack(len(values))
    for s in values:
        _str(out, s)


def _int(out: bytearray, n: int) -> None:
    size = n.bit_length() // 8 + 1
    out += _U8.pack(size)
    out += n.to_bytes(size, "little", signed=True)


def _opt_int(out: bytearray, n: int | None) -> None:
    if n is None:
        out += b"\0"
    else:
        out += b"\1"
        _int(out, n)


def _sampling(out: bytearray, o: SamplingOptions) -> None:
    out += _F64.pack(o.temperature)
    _int(out, o.top_k)
    out += _FLOATS4.pack(o.top_p, o.min_p, o.presence_penalty, o.frequency_penalty)
    out += _F64.pack(o.repetition_penalty)
    _opt_int(out, o.seed)
    _opt_int(out, o.logprobs)
    _opt_int(out, o.prompt_logprobs)
    _int(out, o.min_tokens)
    _ints(out, o.forbidden_ids)


def encode_step(step: SchedulerOutput) -> bytes:
    out = bytearray(_U32.pack(len(step.seqs)))
    for s in step.seqs:
        if isinstance(s, CachedSeq):
            out += b"\1"
            _str(out, s.request_id)
            _ints(out, s.new_token_ids)
            _ints(out, s.new_block_ids)
            out += _CACHED_TAIL.pack(s.start, s.num_new, s.sample)
        else:
            out += b"\0"
            _str(out, s.request_id)
            _ints(out, s.token_ids)
            out += _NEW_MID.pack(s.num_prompt_tokens)
            _ints(out, s.block_ids)
            out += _CACHED_TAIL.pack(s.start, s.num_new, s.sample)
            _sampling(out, s.sampling)
    _strs(out, step.finished_ids)
    _strs(out, step.preempted_ids)
    out += _STATS.pack(step.num_scheduled_tokens, step.num_prompt_tokens, step.prefix_cache_queries,
                       step.prefix_cache_hits)
    return bytes(out)


# ---- decoding -----------------------------------------------------------------------------------------------
class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | memoryview):
        self.buf, self.pos = memoryview(buf), 0

    def take(self, st: struct.Struct) -> tuple:
        v = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def u8(self) -> int:
        return self.take(_U8)[0]

    def u32(self) -> int:
        return self.take(_U32)[0]

    def bytes_(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise DecodeError("malformed step message: truncated")
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def ints(self) -> tuple[int, ...]:
        n, = _U32.unpack_from(self.buf, self.pos)
        v = struct.unpack_from(f"<{n}q", self.buf, self.pos + 4)  # the format is cached by struct
        self.pos += 4 + 8 * n
        return v

    def str_(self) -> str:
        return str(self.bytes_(self.u32()), "utf-8")

    def strs(self) -> tuple[str, ...]:
        return tuple(self.str_() for _ in range(self.u32()))

    def int_(self) -> int:
        return int.from_bytes(self.bytes_(self.u8()), "little", signed=True)

    def opt_int(self) -> int | None:
        flag = self.u8()
        if flag > 1:
            raise DecodeError(f"malformed step message: bad optional flag {flag}")
        return self.int_() if flag else None

    def sampling(self) -> SamplingOptions:
        temperature, = self.take(_F64)
        top_k = self.int_()
        top_p, min_p, presence, frequency = self.take(_FLOATS4)
        repetition, = self.take(_F64)
        return SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                               presence_penalty=presence, frequency_penalty=frequency,
                               repetition_penalty=repetition, seed=self.opt_int(), logprobs=self.opt_int(),
                               prompt_logprobs=self.opt_int(), min_tokens=self.int_(), forbidden_ids=self.ints())


def decode_step(buf: bytes | memoryview) -> SchedulerOutput:
    r = _Reader(buf)
    try:
        seqs = []
        for _ in range(r.u32()):
            tag = r.u8()
            rid = r.str_()
            if tag == _CACHED:
                new_tokens, new_blocks = r.ints(), r.ints()
                start, num_new, sample = r.take(_CACHED_TAIL)
                seqs.append(CachedSeq(rid, new_tokens, new_blocks, start, num_new, bool(sample)))
            elif tag == _NEW:
                tokens = r.ints()
                num_prompt, = r.take(_NEW_MID)
                blocks = r.ints()
                start, num_new, sample = r.take(_CACHED_TAIL)
                seqs.append(NewSeq(rid, tokens, num_prompt, blocks, start, num_new, bool(sample), r.sampling()))
            else:
                raise DecodeError(f"malformed step message: unknown sequence tag {tag}")
        finished, preempted = r.strs(), r.strs()
        scheduled, prompt, queries, hits = r.take(_STATS)
    except (struct.error, UnicodeDecodeError) as e:
        raise DecodeError(f"malformed step message: {e}") from None
    if r.pos != len(r.buf):
        raise DecodeError(f"malformed step message: {len(r.buf) - r.pos} trailing bytes")
    return SchedulerOutput(tuple(seqs), finished, preempted, scheduled, prompt, queries, hits)
