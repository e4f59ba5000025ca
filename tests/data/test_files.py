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


def test_values_that_overflow_float32_are_caught(tmp_path):
    data = np.random.default_rng(0).normal(size=(50, 2))
    data[6, 0] = 1e300
    np.save(tmp_path / "data.npy", data)
    module = FileDataModule(str(tmp_path / "data.npy"), batch_size=8)
    with pytest.raises(ValueError, match="NaN or Inf values in rows"):
        module.setup()
