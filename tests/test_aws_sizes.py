"""Fargate sizes: parsing cpu/memory options, the valid combinations, and errors that name the
nearest valid sizes."""

from __future__ import annotations

import pytest

from starburst.aws import sizes
from starburst.aws.sizes import nearest_sizes, normalize_arch, parse_cpu, parse_memory, validate_size


@pytest.mark.parametrize(
    "text, mib",
    [
        ("8GB", 8192),
        ("8 GiB", 8192),
        ("8gb", 8192),
        ("8G", 8192),
        (8192, 8192),
        ("8192", 8192),
        ("512MB", 512),
        ("512 MiB", 512),
        ("0.5GB", 512),
        ("1.5 GB", 1536),
        (2048.0, 2048),
    ],
)
def test_parse_memory(text, mib):
    assert parse_memory(text) == mib


@pytest.mark.parametrize("bad", ["eight GB", "8 XB", "GB", "", "-1GB", "0GB", "nanGB"])
def test_parse_memory_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        parse_memory(bad)


def test_parse_memory_bare_small_number_hints_at_gb():
    with pytest.raises(ValueError, match=r"did you mean '8GB'"):
        parse_memory(8)


def test_parse_memory_refuses_fractional_mib_and_wrong_types():
    with pytest.raises(ValueError, match="whole number of MiB"):
        parse_memory("1.0001GB")
    with pytest.raises(TypeError):
        parse_memory(True)
    with pytest.raises(TypeError):
        parse_memory([8])


@pytest.mark.parametrize(
    "value, vcpu",
    [(4, 4.0), ("4", 4.0), (0.5, 0.5), ("0.25", 0.25), ("2 vCPU", 2.0), ("16vcpu", 16.0),
     (1024, 1.0), ("4096", 4.0), (256, 0.25), ("512 units", 0.5), (3, 3.0)],
)
def test_parse_cpu(value, vcpu):
    assert parse_cpu(value) == vcpu


@pytest.mark.parametrize("bad", [0, -1, "four", "", "4 cores", float("inf")])
def test_parse_cpu_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        parse_cpu(bad)


def test_parse_cpu_refuses_bool():
    with pytest.raises(TypeError):
        parse_cpu(True)


def test_valid_size_table_matches_aws_documentation():
    table = sizes.FARGATE_SIZES
    gb = 1024
    assert table[256] == (512, 1 * gb, 2 * gb)
    assert table[512] == tuple(g * gb for g in (1, 2, 3, 4))
    assert table[1024] == tuple(g * gb for g in range(2, 9))
    assert table[2048] == tuple(g * gb for g in range(4, 17))
    assert table[4096] == tuple(g * gb for g in range(8, 31))
    assert table[8192] == tuple(g * gb for g in range(16, 61, 4))
    assert table[16384] == tuple(g * gb for g in range(32, 121, 8))
    assert len(sizes.valid_sizes()) == 3 + 4 + 7 + 13 + 23 + 12 + 12


@pytest.mark.parametrize(
    "cpu, memory, expected",
    [
        (0.25, "512MB", (256, 512)),
        (0.25, "2GB", (256, 2048)),
        (0.5, "4GB", (512, 4096)),
        (1, "2GB", (1024, 2048)),
        (4, "8GB", (4096, 8192)),
        ("4", "30 GiB", (4096, 30720)),
        (8, "60GB", (8192, 61440)),
        (16, "120GB", (16384, 122880)),
        (16, 32768, (16384, 32768)),
        (2048, "16GB", (2048, 16384)),
    ],
)
def test_validate_size_accepts_every_kind_of_valid_size(cpu, memory, expected):
    assert validate_size(cpu, memory) == expected
    assert validate_size(cpu, memory, arch="arm64") == expected


def test_every_listed_size_validates_and_nothing_in_between_does():
    valid = set(sizes.valid_sizes())
    for cpu_units in sizes.FARGATE_SIZES:
        for mib in range(512, 125 * 1024, 512):
            ok = (cpu_units, mib) in valid
            try:
                validate_size(cpu_units / 1024, mib)
            except ValueError:
                assert not ok, (cpu_units, mib)
            else:
                assert ok, (cpu_units, mib)


def test_invalid_size_names_nearest_valid_sizes():
    with pytest.raises(ValueError) as info:
        validate_size(4, "64GB")
    message = str(info.value)
    # 8 vCPU stops at 60 GB, so 64 GB needs 16 vCPU.
    assert message.startswith("4 vCPU with 64 GB is not a Fargate size; nearest: 4 vCPU/30 GB or 16 vCPU/64 GB")
    assert "4 vCPU takes 8 GB to 30 GB in 1 GB steps" in message


@pytest.mark.parametrize(
    "cpu, memory, nearest",
    [
        (3, "8GB", "2 vCPU/8 GB or 4 vCPU/8 GB"),
        (1, "1GB", "0.5 vCPU/1 GB or 1 vCPU/2 GB"),
        (2, "4.5GB", "2 vCPU/4 GB or 2 vCPU/5 GB"),
        (8, "18GB", "8 vCPU/16 GB or 8 vCPU/20 GB"),
        (8, "6GB", "2 vCPU/6 GB or 8 vCPU/16 GB"),
        (0.125, "512MB", "0.25 vCPU/0.5 GB"),
    ],
)
def test_nearest_sizes_bracket_the_request(cpu, memory, nearest):
    with pytest.raises(ValueError, match="nearest: " + nearest.replace(".", r"\.")):
        validate_size(cpu, memory)


def test_too_large_names_the_largest():
    with pytest.raises(ValueError) as info:
        validate_size(32, "64GB")
    assert "nearest: 16 vCPU/64 GB (the largest Fargate task has 16 vCPU and 120 GB)" in str(info.value)
    assert nearest_sizes(32 * 1024, 200 * 1024) == [(16384, 122880)]


def test_cpu_that_is_no_fargate_size_lists_the_cpu_sizes():
    with pytest.raises(ValueError, match=r"Fargate CPU sizes are 0\.25, 0\.5, 1, 2, 4, 8 and 16 vCPU"):
        validate_size(3, "8GB")


@pytest.mark.parametrize(
    "alias, arch",
    [("x86_64", "x86_64"), ("AMD64", "x86_64"), ("x86", "x86_64"), (None, "x86_64"),
     ("arm64", "arm64"), ("aarch64", "arm64"), ("Graviton", "arm64"), ("ARM64", "arm64")],
)
def test_normalize_arch(alias, arch):
    assert normalize_arch(alias) == arch


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="not a Fargate architecture"):
        validate_size(1, "2GB", arch="sparc")


def test_formatting():
    assert sizes.format_size(256, 512) == "0.25 vCPU/0.5 GB"
    assert sizes.format_size(16384, 122880) == "16 vCPU/120 GB"
    assert sizes.format_memory(1536) == "1.5 GB"
