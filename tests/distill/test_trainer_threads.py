"""The trainer's choice of torch threads (edgekd.distill.trainer.pick_threads): the choosing function only,
no timing (why one thread on a busy machine is measured in benchmarks/distill_fashion_mnist.py)."""

import pytest

from edgekd.distill.trainer import pick_threads
from edgekd.errors import ConfigError


@pytest.mark.parametrize("load", [2.0, 2.5, 15.0])
def test_auto_takes_one_thread_when_the_load_already_fills_the_cores(load):
    assert pick_threads("auto", load_average=load, cores=2) == 1


@pytest.mark.parametrize("load", [0.0, 1.2, 1.99])
def test_auto_keeps_torchs_count_on_a_machine_with_a_core_to_spare(load):
    assert pick_threads("auto", load_average=load, cores=2) is None


def test_auto_scales_with_the_cores_this_process_may_use():
    assert pick_threads("auto", load_average=6.0, cores=8) is None
    assert pick_threads("auto", load_average=8.0, cores=8) == 1


def test_auto_leaves_a_thread_count_set_in_omp_num_threads_to_the_user():
    assert pick_threads("auto", load_average=15.0, cores=2, omp_num_threads="2") is None


@pytest.mark.parametrize("asked", [3, "3", 1])
def test_a_count_asked_for_is_kept_whatever_the_load(asked):
    assert pick_threads(asked, load_average=15.0, cores=2) == int(asked)
    assert pick_threads(asked, load_average=0.0, cores=2, omp_num_threads="8") == int(asked)


def test_none_leaves_torch_alone():
    assert pick_threads(None, load_average=15.0, cores=2) is None


@pytest.mark.parametrize("bad", [0, -1, "two", "1.5"])
def test_a_count_that_is_not_a_positive_number_is_refused_with_the_fix(bad):
    with pytest.raises(ConfigError, match="positive number of threads"):
        pick_threads(bad, load_average=0.0, cores=2)
