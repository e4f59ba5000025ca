"""The user's own files: loading, and a clear error for each kind of bad input."""

import numpy as np
import pytest
import torch

from distill.data import FileDataModule, build_datamodule, load_matrix


def write_csv(path, text: str):
    path.write_text(text)
    return path


def test_npy_round_trip_and_splits(tmp_path):
    data = np.random.default_rng(0).normal(size=(200, 3)) * [1.0, 5.0, 0.1]
    np.save(tmp_path / "data.npy", data)
    module = build_datamodule("file", path=str(tmp_path / "data.npy"), batch_size=32)
    assert module.features == 3 and module.name == "file"
    module.setup()
    sizes = [len(s) for s in (module.train_data, module.val_data, module.test_data)]
    assert sizes == [160, 20, 20]
    joined = torch.cat([module.train_data, module.val_data, module.test_data])
    torch.testing.assert_close(
        joined.sort(0).values, torch.as_tensor(data, dtype=torch.float32).sort(0).values
    )
    assert module.entropy is None
    assert next(iter(module.train_dataloader())).shape == (32, 3)


def test_csv_with_and_without_header(tmp_path):
    headed = write_csv(tmp_path / "headed.csv", "x,y\n1,2\n3.5,-4e-1\n\n5,6\n")
    np.testing.assert_array_equal(load_matrix(headed), [[1, 2], [3.5, -0.4], [5, 6]])
    bare = write_csv(tmp_path / "bare.csv", "1,2\n3,4\n")
    np.testing.assert_array_equal(load_matrix(bare), [[1, 2], [3, 4]])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy not found"):
        load_matrix(tmp_path / "nope.npy")


@pytest.mark.parametrize("shape", [(10,), (4, 5, 6)])
def test_not_two_dimensional(tmp_path, shape):
    np.save(tmp_path / "data.npy", np.zeros(shape))
    with pytest.raises(ValueError, match=r"has shape .* must be a 2-D array \(N rows, D columns\)"):
        load_matrix(tmp_path / "data.npy")


def test_nan_and_inf_rows_are_named(tmp_path):
    data = np.ones((30, 2))
    data[[3, 7, 8, 11, 12, 20, 25], 1] = [np.nan, np.inf, -np.inf, np.nan, np.nan, np.nan, np.nan]
    np.save(tmp_path / "data.npy", data)
    with pytest.raises(
        ValueError, match=r"NaN or Inf values in rows 3, 7, 8, 11, 12 \(first 5 of 7\)"
    ):
        load_matrix(tmp_path / "data.npy")
    csv = write_csv(tmp_path / "gaps.csv", "a,b\n1,2\n3,\nnan,4\n")
    with pytest.raises(ValueError, match=r"rows 1, 2 .*drop or impute"):
        load_matrix(csv)


def test_non_numeric_column_is_named(tmp_path):
    csv = write_csv(tmp_path / "mixed.csv", "height,colour,weight\n1.0,red,3\n2.0,blue,4\n")
    with pytest.raises(ValueError, match=r"column 'colour' is not numeric \(line 2 holds 'red'\)"):
        load_matrix(csv)
    bare = write_csv(tmp_path / "bare.csv", "1,2\n3,x\n")
    with pytest.raises(ValueError, match=r"column 1 is not numeric"):
        load_matrix(bare)


def test_ragged_csv_row(tmp_path):
    csv = write_csv(tmp_path / "ragged.csv", "1,2\n3,4,5\n")
    with pytest.raises(ValueError, match="line 2 has 3 values but the file has 2 columns"):
        load_matrix(csv)


def test_object_npy_and_other_suffixes(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a numeric .npy array"):
        load_matrix(tmp_path / "objects.npy")
    (tmp_path / "data.txt").write_text("1 2\n")
    with pytest.raises(ValueError, match="neither .npy nor .csv"):
        load_matrix(tmp_path / "data.txt")


def test_too_few_rows_for_the_splits(tmp_path):
    np.save(tmp_path / "small.npy", np.random.default_rng(0).normal(size=(4, 2)))
    with pytest.raises(ValueError, match="has 4 rows, too few .* provide at least 5 rows"):
        FileDataModule(str(tmp_path / "small.npy"))


def test_constant_column_is_an_error_at_setup(tmp_path):
    data = np.random.default_rng(0).normal(size=(50, 3))
    data[:, 2] = 1.0
    np.save(tmp_path / "data.npy", data)
    module = FileDataModule(str(tmp_path / "data.npy"), batch_size=8)
    with pytest.raises(ValueError, match=r"column\(s\) \[2\] .* constant"):
        module.setup()


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_values_that_overflow_float32_are_named_as_such(tmp_path, suffix):
    data = np.random.default_rng(0).normal(size=(50, 3))
    data[[6, 9], 1] = [1e39, -1e300]  # finite in float64, Inf in float32
    data[9, 2] = 3e38  # still within float32
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        np.save(path, data)
    else:
        np.savetxt(path, data, delimiter=",")
    with pytest.raises(ValueError) as error:
        FileDataModule(str(path), batch_size=8)
    message = str(error.value)
    assert message.startswith(str(path))
    assert r"overflow float32 (|x| > 3.4e38) in rows 6, 9 (0-based), column(s) [1]" in message
    assert "NaN or Inf" not in message and "rescale" in message


def test_large_values_within_float32_load(tmp_path):
    data = np.random.default_rng(0).normal(size=(20, 2)) * [1e30, 1.0]
    np.save(tmp_path / "data.npy", data)
    np.testing.assert_array_equal(load_matrix(tmp_path / "data.npy"), data)


@pytest.mark.parametrize("shape", [(0,), (0, 3), (5, 0)])
def test_empty_npy_names_the_file_and_the_fix(tmp_path, shape):
    np.save(tmp_path / "empty.npy", np.zeros(shape))
    with pytest.raises(ValueError, match=r"empty\.npy holds no data \(shape .*provide an \(N, D\)"):
        load_matrix(tmp_path / "empty.npy")


def test_zero_byte_and_cut_npy_files_name_the_file(tmp_path):
    (tmp_path / "zero.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.npy is an empty file \(0 bytes\).*numpy\.save"):
        load_matrix(tmp_path / "zero.npy")
    np.save(tmp_path / "whole.npy", np.ones((100, 2)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "whole.npy").read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.npy is not a numeric \.npy array"):
        load_matrix(tmp_path / "cut.npy")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", r"empty\.csv holds no rows: write one sample per row"),
        ("\n \n", r"empty\.csv holds no rows"),
        ("x,y\n", r"empty\.csv holds a header \(x,y\) but no rows: write one sample per row"),
    ],
)
def test_empty_csv_names_the_file_and_the_fix(tmp_path, text, expected):
    with pytest.raises(ValueError, match=expected):
        load_matrix(write_csv(tmp_path / "empty.csv", text))
