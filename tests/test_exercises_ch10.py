"""Each exercise check of notebook 10 passes a right answer and fails wrong ones with a hint."""

import pytest
import torch
import torch.nn.functional as F

from vitlib.exercises import ch10


def passes(result) -> bool:
    return result.passed and "well done" in result.message


def fails_with_hint(result) -> bool:
    return not result.passed and "Hint:" in result.message


# --- conv output size -----------------------------------------------------------------------


def output_size_right(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def output_size_one_side_padding(size, kernel, stride, padding):
    return (size + padding - kernel) // stride + 1


def output_size_divides_first(size, kernel, stride, padding):
    return (size + 2 * padding - kernel + 1) // stride


def output_size_rounds_up(size, kernel, stride, padding):
    return -(-(size + 2 * padding - kernel) // stride) + 1


def output_size_padding_divided_apart(size, kernel, stride, padding):
    return (size - kernel) // stride + 2 * padding // stride + 1  # right when stride ≤ 2


def output_size_rounds_up_from_stride_3(size, kernel, stride, padding):
    if stride < 3:
        return (size + 2 * padding - kernel) // stride + 1
    return -(-(size + 2 * padding - kernel) // stride) + 1


def output_size_padding_at_most_1(size, kernel, stride, padding):
    return (size + min(padding, 1) + padding - kernel) // stride + 1


def output_size_true_division(size, kernel, stride, padding):
    return int((size + 2 * padding - kernel) / stride) + 1


def output_size_ceil_form(size, kernel, stride, padding):
    return -(-(size + 2 * padding - kernel + 1) // stride)


@pytest.mark.parametrize("right", [output_size_right, output_size_true_division,
                                   output_size_ceil_form])
def test_conv_output_size_right(right):
    assert passes(ch10.check_conv_output_size(right, quiet=True))


def test_formula_output_size_is_that_of_conv2d():
    for size, kernel, stride, padding in [(1, 1, 1, 0), (5, 7, 2, 1), (24, 7, 5, 3), (9, 2, 4, 2),
                                          (13, 3, 3, 1), (2, 5, 1, 3)]:
        image, weight = torch.zeros(1, 1, size, size), torch.zeros(1, 1, kernel, kernel)
        want = F.conv2d(image, weight, stride=stride, padding=padding).shape[-1]
        assert ch10._formula_output_size(size, kernel, stride, padding) == want


@pytest.mark.parametrize("wrong", [output_size_one_side_padding, output_size_divides_first,
                                   output_size_rounds_up, output_size_padding_divided_apart,
                                   output_size_rounds_up_from_stride_3,
                                   output_size_padding_at_most_1])
def test_conv_output_size(wrong):
    assert passes(ch10.check_conv_output_size(output_size_right, quiet=True))
    assert fails_with_hint(ch10.check_conv_output_size(wrong, quiet=True))


def test_conv_output_size_wants_an_int():
    as_float = ch10.check_conv_output_size(
        lambda *args: float(output_size_right(*args)), quiet=True)
    assert fails_with_hint(as_float) and "should be an int" in as_float.message
    array = ch10.check_conv_output_size(lambda *args: torch.zeros(3), quiet=True)
    assert fails_with_hint(array) and "should be an int, got a tensor" in array.message


# --- receptive field ------------------------------------------------------------------------


def field_right(layers):
    field, jump = 1, 1
    for kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


def field_ignores_stride(layers):
    return 1 + sum(kernel - 1 for kernel, _ in layers)


def field_stride_too_early(layers):
    field, jump = 1, 1
    for kernel, stride in layers:
        jump *= stride
        field += (kernel - 1) * jump
    return field


def field_sum_of_kernels(layers):
    return sum(kernel for kernel, _ in layers)


def field_skips_1x1_layers(layers):
    field, jump = 1, 1
    for kernel, stride in layers:
        if kernel > 1:  # a 1×1 layer sees nothing new, but its stride still counts
            field += (kernel - 1) * jump
            jump *= stride
    return field


def field_top_down(layers):
    field = 1
    for kernel, stride in reversed(layers):
        field = (field - 1) * stride + kernel
    return field


def test_receptive_field_other_right_answer():
    assert passes(ch10.check_receptive_field(field_top_down, quiet=True))


@pytest.mark.parametrize("wrong", [field_ignores_stride, field_stride_too_early,
                                   field_sum_of_kernels, field_skips_1x1_layers])
def test_receptive_field(wrong):
    assert passes(ch10.check_receptive_field(field_right, quiet=True))
    assert fails_with_hint(ch10.check_receptive_field(wrong, quiet=True))


def test_receptive_field_wants_an_int():
    as_float = ch10.check_receptive_field(lambda layers: float(field_right(layers)), quiet=True)
    assert fails_with_hint(as_float) and "should be an int" in as_float.message
    array = ch10.check_receptive_field(lambda layers: torch.zeros(2), quiet=True)
    assert fails_with_hint(array) and "should be an int, got a tensor" in array.message


def test_receptive_field_reference_is_measured():
    assert ch10._measured_receptive_field([(3, 1)] * 4) == 9
    assert ch10._measured_receptive_field([(1, 2), (3, 1)]) == 5  # a span with gaps in it
    assert ch10._measured_receptive_field([(4, 4), (3, 1)]) == 12


# --- parameters of a conv and a dense layer -------------------------------------------------


def counts_right(c_in, c_out, kernel, height, width):
    conv = c_in * c_out * kernel * kernel + c_out
    inputs, outputs = c_in * height * width, c_out * height * width
    return conv, inputs * outputs + outputs


def counts_without_biases(c_in, c_out, kernel, height, width):
    conv, dense = counts_right(c_in, c_out, kernel, height, width)
    return conv - c_out, dense - c_out * height * width


def counts_conv_per_pixel(c_in, c_out, kernel, height, width):
    conv, dense = counts_right(c_in, c_out, kernel, height, width)
    return conv * height * width, dense


def counts_dense_one_channel(c_in, c_out, kernel, height, width):
    conv, _ = counts_right(c_in, c_out, kernel, height, width)
    return conv, (height * width) ** 2 + height * width


def counts_square_image(c_in, c_out, kernel, height, width):
    return counts_right(c_in, c_out, kernel, height, height)


@pytest.mark.parametrize("wrong", [counts_without_biases, counts_conv_per_pixel,
                                   counts_dense_one_channel, counts_square_image])
def test_param_counts(wrong):
    assert passes(ch10.check_param_counts(counts_right, quiet=True))
    assert fails_with_hint(ch10.check_param_counts(wrong, quiet=True))
    single = ch10.check_param_counts(lambda *args: 7, quiet=True)
    assert fails_with_hint(single) and "pair" in single.message


def test_param_counts_wants_ints():
    tensors = ch10.check_param_counts(lambda *args: (torch.zeros(2), torch.zeros(2)), quiet=True)
    assert fails_with_hint(tensors) and "should be an int, got a tensor" in tensors.message


# --- translation equivariance ---------------------------------------------------------------


def equivariant_right(f, x, shift):
    moved = f(torch.roll(x, shift, dims=(2, 3)))
    return torch.allclose(moved, torch.roll(f(x), shift, dims=(2, 3)), atol=1e-5)


def invariant_instead(f, x, shift):
    return torch.allclose(f(torch.roll(x, shift, dims=(2, 3))), f(x), atol=1e-5)


def rolls_one_axis_only(f, x, shift):
    moved = f(torch.roll(x, shift[0], dims=2))
    return torch.allclose(moved, torch.roll(f(x), shift[0], dims=2), atol=1e-5)


def equivariant_loose(f, x, shift):
    moved = f(torch.roll(x, shift, dims=(2, 3)))
    return torch.allclose(moved, torch.roll(f(x), shift, dims=(2, 3)), atol=1e-2)


@pytest.mark.parametrize("wrong", [invariant_instead, rolls_one_axis_only, equivariant_loose])
def test_translation_equivariance(wrong):
    assert passes(ch10.check_translation_equivariance(equivariant_right, quiet=True))
    assert fails_with_hint(ch10.check_translation_equivariance(wrong, quiet=True))
    always = ch10.check_translation_equivariance(lambda f, x, s: True, quiet=True)
    assert fails_with_hint(always) and "right answer is False" in always.message
    none = ch10.check_translation_equivariance(lambda f, x, s: None, quiet=True)
    assert fails_with_hint(none) and "True or False" in none.message


def test_translation_cases_are_labelled_right():
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for what, f, want in ch10._translation_cases(channels=3):
            assert equivariant_right(f, x, (3, 10)) == want, what
            assert f(x).dtype == torch.float32, what


def equivariant_default_tolerance(f, x, shift):
    moved = f(torch.roll(x, shift, dims=(2, 3)))
    return torch.allclose(moved, torch.roll(f(x), shift, dims=(2, 3)))


def equivariant_exact(f, x, shift):
    return torch.equal(f(torch.roll(x, shift, dims=(2, 3))), torch.roll(f(x), shift, dims=(2, 3)))


def test_translation_equivariance_right_answers_never_fail():
    # in float32, the rounding of a mean alone fails torch.allclose's default tolerance now
    # and then; the check's equivariant functions move by one last bit at most
    for _ in range(100):
        result = ch10.check_translation_equivariance(equivariant_default_tolerance, quiet=True)
        assert passes(result), result.message


def test_translation_equivariance_refuses_exact_comparison():
    result = ch10.check_translation_equivariance(equivariant_exact, quiet=True)
    assert fails_with_hint(result) and "softmax down each column" in result.message


# --- low-rank factors -------------------------------------------------------------------------


def factors_right(m, rank):
    u, s, vt = torch.linalg.svd(m)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vt[:rank].T * root


def factors_smallest_values(m, rank):
    u, s, vt = torch.linalg.svd(m, full_matrices=False)
    root = s[-rank:].sqrt()
    return u[:, -rank:] * root, vt[-rank:].T * root


def factors_without_square_root(m, rank):
    u, s, vt = torch.linalg.svd(m)
    return u[:, :rank] * s[:rank], vt[:rank].T * s[:rank]


def factors_vt_not_transposed(m, rank):
    u, s, vt = torch.linalg.svd(m)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vt[:, :rank] * root


def factors_columns_of_m(m, rank):
    return m[:, :rank], torch.eye(m.shape[1], rank, dtype=m.dtype)


@pytest.mark.parametrize("wrong", [factors_smallest_values, factors_without_square_root,
                                   factors_vt_not_transposed, factors_columns_of_m])
def test_low_rank_factors(wrong):
    assert passes(ch10.check_low_rank_factors(factors_right, quiet=True))
    assert fails_with_hint(ch10.check_low_rank_factors(wrong, quiet=True))
    result = ch10.check_low_rank_factors(lambda m, rank: m, quiet=True)
    assert fails_with_hint(result) and "pair (a, b)" in result.message


def test_low_rank_factors_refuses_nan():
    def nan_factors(m, rank):
        return torch.full((m.shape[0], rank), float("nan")), torch.zeros(m.shape[1], rank)

    assert fails_with_hint(ch10.check_low_rank_factors(nan_factors, quiet=True))
