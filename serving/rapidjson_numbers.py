"""Numbers as rapidjson 1.1.0 reads and writes them, for serving/json_tensor.py.

Reading: GenericReader::ParseNumber() with kParseNanAndInfFlag, its default (not correctly rounded) decimal
scaling, and parse_float / parse_int hooks that let Python's json module give the same values. Writing:
internal::dtoa(), Grisu2 plus Prettify(), which TF Serving's error messages use to show request numbers.
"""

from __future__ import annotations

import math
import re
import struct
from fractions import Fraction


class ParseError(Exception):
    """A rapidjson parse error: GetParseError_En()'s text and the offset it reports."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.message, self.offset = message, offset


class NeedsReader(Exception):
    """Python's json met something only the rapidjson port can judge."""


# GetParseError_En() texts of the errors ParseNumber() can raise.
VALUE_INVALID = "Invalid value."
_NUMBER_TOO_BIG = "Number too big to be stored in double."
_MISS_FRACTION = "Miss fraction part in number."
_MISS_EXPONENT = "Miss exponent in number."

_POW10 = [float(f"1e{n}") for n in range(309)]  # internal::Pow10(): the compiler's correctly rounded literals


def _strtod_normal_precision(d: float, p: int) -> float:
    """internal::StrtodNormalPrecision(): rapidjson's default (not correctly rounded) decimal scaling."""

    def fast_path(significand: float, exp: int) -> float:
        if exp < -308:
            return 0.0
        return significand * _POW10[exp] if exp >= 0 else significand / _POW10[-exp]

    if p < -308:
        return fast_path(fast_path(d, -308), p + 308)
    return fast_path(d, p)


def read_number(buf: bytes, pos: int) -> tuple[int | float, int]:
    """GenericReader::ParseNumber() with kParseNanAndInfFlag on a 64-bit build: (value, end position).

    Integers in int64/uint64 range stay ints (rapidjson's Int/Uint/Int64/Uint64); everything else is a double
    computed exactly as rapidjson computes it, quirks included ("NaN.5" reads as 0.5)."""
    end = len(buf)

    def peek() -> int:
        return buf[pos] if pos < end else 0

    def consume(char: str) -> bool:
        nonlocal pos
        if peek() == ord(char):
            pos += 1
            return True
        return False

    def is_digit() -> bool:
        return 0x30 <= peek() <= 0x39

    def take_digit() -> int:
        nonlocal pos
        pos += 1
        return buf[pos - 1] - 0x30

    start = pos
    minus = consume("-")
    i = i64 = 0
    use64 = use_double = nan_or_inf = False
    significant = 0
    d = 0.0
    if peek() == 0x30:
        pos += 1
    elif 0x31 <= peek() <= 0x39:
        i = take_digit()
        limit, last = (214748364, 0x38) if minus else (429496729, 0x35)
        while is_digit():
            if i >= limit and (i != limit or peek() > last):
                i64, use64 = i, True
                break
            i = i * 10 + take_digit()
            significant += 1
    elif peek() in (0x49, 0x4E):  # 'I', 'N'
        nan_or_inf = True
        if consume("N") and consume("a") and consume("N"):
            d = math.nan
        elif consume("I") and consume("n") and consume("f"):
            d = -math.inf if minus else math.inf
            if peek() == 0x69 and not all(consume(c) for c in "inity"):
                raise ParseError(VALUE_INVALID, pos)
        else:
            raise ParseError(VALUE_INVALID, pos)
    else:
        raise ParseError(VALUE_INVALID, pos)

    if use64:
        limit, last = (0x0CCCCCCCCCCCCCCC, 0x38) if minus else (0x1999999999999999, 0x35)
        while is_digit():
            if i64 >= limit and (i64 != limit or peek() > last):
                d, use_double = float(i64), True
                break
            i64 = i64 * 10 + take_digit()
            significant += 1
    if use_double:  # an integer past 64 bits continues as a double
        while is_digit():
            if d >= 1.7976931348623157e307:
                raise ParseError(_NUMBER_TOO_BIG, start)
            d = d * 10 + take_digit()

    exp_frac = 0
    if consume("."):
        if not is_digit():
            raise ParseError(_MISS_FRACTION, pos)
        if not use_double:
            if not use64:
                i64 = i
            while is_digit() and i64 <= 0x1FFFFFFFFFFFFF:  # 2^53 - 1: the exact fast path
                i64 = i64 * 10 + take_digit()
                exp_frac -= 1
                if i64:
                    significant += 1
            d, use_double = float(i64), True
        while is_digit():
            digit = take_digit()
            if significant < 17:
                d = d * 10.0 + digit
                exp_frac -= 1
                if d > 0.0:
                    significant += 1

    exp = 0
    if consume("e") or consume("E"):
        if not use_double:
            d, use_double = float(i64 if use64 else i), True
        exp_minus = False
        if not consume("+"):
            exp_minus = consume("-")
        if not is_digit():
            raise ParseError(_MISS_EXPONENT, pos)
        exp = take_digit()
        if exp_minus:
            while is_digit():
                exp = exp * 10 + take_digit()
                if exp >= 214748364:  # rapidjson issue #313: swallow the rest rather than overflow
                    while is_digit():
                        pos += 1
            exp = -exp
        else:
            max_exp = 308 - exp_frac
            while is_digit():
                exp = exp * 10 + take_digit()
                if exp > max_exp:
                    raise ParseError(_NUMBER_TOO_BIG, start)

    if use_double:
        d = _strtod_normal_precision(d, exp + exp_frac)
        return (-d if minus else d), pos
    if nan_or_inf:
        return d, pos
    value = i64 if use64 else i
    return (-value if minus else value), pos


# Hooks for json.JSONDecoder, so Python's json module gives the numbers rapidjson gives.
def _port_number(token: str) -> int | float:
    try:
        return read_number(token.encode("ascii"), 0)[0]
    except ParseError:
        raise NeedsReader from None


def rapidjson_int(token: str) -> int | float:
    """parse_int hook: past 64 bits rapidjson carries on in double arithmetic."""
    value = int(token)
    return value if -(2**63) <= value <= 2**64 - 1 else _port_number(token)


def rapidjson_float(token: str) -> float:
    """parse_float hook: the double read_number() gives, computed directly in the common case where every digit
    fits the 64-bit significand (converted to double once) and one multiply or divide by 10^p finishes it."""
    mantissa, exp = token, 0
    if "e" in token or "E" in token:
        mantissa, exp_text = re.split("[eE]", token)
        exp = int(exp_text)
    negative = mantissa.startswith("-")
    int_part, _, frac = mantissa.lstrip("-").partition(".")
    significand = int(int_part + frac)
    p = exp - len(frac)
    # ParseNumber() keeps taking digits into the significand while it is below 2^53.
    if -308 <= p <= 308 and (significand < 2**53 or (significand < 10**17 and significand // 10 < 2**53)):
        d = float(significand)
        d = d * _POW10[p] if p >= 0 else d / _POW10[-p]
        return -d if negative else d
    return _port_number(token)


# internal::dtoa(): Grisu2 plus Prettify(), rapidjson's shortest-ish double formatting (error messages show
# request numbers this way, so it is ported rather than approximated with repr()).
_M64 = (1 << 64) - 1
_DOUBLE_BITS = struct.Struct("<d")
_UINT64_BITS = struct.Struct("<Q")


def double_bits(value: float) -> int:
    """The IEEE 754 bit pattern of a double, as an unsigned 64-bit integer."""
    return _UINT64_BITS.unpack(_DOUBLE_BITS.pack(value))[0]


def _cached_power_table() -> list[tuple[int, int]]:
    """kCachedPowers_F/E: 10^k for k = -348, -340, ..., 340 as a 64-bit significand (rounded) and exponent."""
    table = []
    for k in range(-348, 341, 8):
        value = Fraction(10) ** k
        e = value.numerator.bit_length() - value.denominator.bit_length() - 64
        while value / Fraction(2) ** e >= 1 << 64:
            e += 1
        while value / Fraction(2) ** e < 1 << 63:
            e -= 1
        table.append((round(value / Fraction(2) ** e), e))
    return table


_CACHED_POWERS = _cached_power_table()


def _diy_multiply(f1: int, e1: int, f2: int, e2: int) -> tuple[int, int]:
    product = f1 * f2
    return (product >> 64) + ((product >> 63) & 1), e1 + e2 + 64


def _grisu2(value: float) -> tuple[list[int], int]:
    """Grisu2(): the digits and decimal exponent K of a positive finite double."""
    bits = double_bits(value)
    biased_e, significand = bits >> 52, bits & ((1 << 52) - 1)
    f, e = (significand + (1 << 52), biased_e - 1075) if biased_e else (significand, -1074)

    # NormalizedBoundaries()
    plus_f, plus_e = (f << 1) + 1, e - 1
    while not plus_f & (1 << 53):
        plus_f, plus_e = plus_f << 1, plus_e - 1
    plus_f, plus_e = plus_f << 10, plus_e - 10
    minus_f, minus_e = ((f << 2) - 1, e - 2) if f == 1 << 52 else ((f << 1) - 1, e - 1)
    minus_f <<= minus_e - plus_e

    # GetCachedPower()
    dk = (-61 - plus_e) * 0.30102999566398114 + 347
    k = int(dk) + (1 if dk - int(dk) > 0.0 else 0)
    index = (k >> 3) + 1
    big_k = -(-348 + (index << 3))
    c_f, c_e = _CACHED_POWERS[index]

    shift = 64 - f.bit_length()
    w_f, _ = _diy_multiply(f << shift, e - shift, c_f, c_e)
    wp_f, wp_e = _diy_multiply(plus_f, plus_e, c_f, c_e)
    wm_f, _ = _diy_multiply(minus_f, plus_e, c_f, c_e)
    wm_f += 1
    wp_f -= 1
    return _digit_gen(w_f, wp_f, wp_e, wp_f - wm_f, big_k)


def _digit_gen(w_f: int, mp_f: int, mp_e: int, delta: int, big_k: int) -> tuple[list[int], int]:
    """DigitGen() and GrisuRound()."""
    one_shift = -mp_e
    one_f = 1 << one_shift
    wp_w = (mp_f - w_f) & _M64
    p1, p2 = mp_f >> one_shift, mp_f & (one_f - 1)
    kappa = next((n for n in range(1, 9) if p1 < 10**n), 9)  # CountDecimalDigit32()
    digits: list[int] = []

    def grisu_round(rest: int, ten_kappa: int, wp_w: int) -> None:
        while (
            rest < wp_w
            and delta - rest >= ten_kappa
            and (rest + ten_kappa < wp_w or wp_w - rest > rest + ten_kappa - wp_w)
        ):
            digits[-1] -= 1
            rest += ten_kappa

    while kappa > 0:
        digit, p1 = divmod(p1, 10 ** (kappa - 1))
        if digit or digits:
            digits.append(digit)
        kappa -= 1
        rest = (p1 << one_shift) + p2
        if rest <= delta:
            grisu_round(rest, (10**kappa) << one_shift, wp_w)
            return digits, big_k + kappa
    while True:
        p2 = (p2 * 10) & _M64
        delta = (delta * 10) & _M64
        digit = p2 >> one_shift
        if digit or digits:
            digits.append(digit)
        p2 &= one_f - 1
        kappa -= 1
        if p2 < delta:
            grisu_round(p2, one_f, (wp_w * (10**-kappa if -kappa < 9 else 0)) & _M64)
            return digits, big_k + kappa


def dtoa(value: float) -> str:
    """internal::dtoa() with the writer's default maxDecimalPlaces (324, so nothing is truncated)."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    digit_list, k = _grisu2(abs(value))
    digits = "".join(map(str, digit_list))
    length = len(digits)
    kk = length + k  # 10^(kk-1) <= v < 10^kk
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif kk < -324:
        text = "0.0"
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + text
