"""worker.schedule.next_pass: a pure function of the waiting work and a fake clock."""

from __future__ import annotations

import pytest

from worker.schedule import Pass, Policy, SchedulerState, Wait, Waiting, WorkClass, express_pass, next_pass

SMALL = ((384, 480), 1.5, "off")  # a 320x256 frame's bucket
BIG = ((1536, 1920), 1.5, "off")  # a 1280x1024 frame's bucket
SMALL_COST, BIG_COST = 384 * 480, 1536 * 1920


def image(since: float, bucket=SMALL, cost: int = SMALL_COST, name: str = "") -> Waiting:
    return Waiting(WorkClass.IMAGE, bucket, since, 1, cost, ref=name or f"image@{since}")


def frame(work_class: WorkClass, since: float, bucket=SMALL) -> Waiting:
    return Waiting(work_class, bucket, since, 1, SMALL_COST, ref=f"{work_class.value}@{since}")


def measured(seconds_per_pixel: float = 3e-7) -> SchedulerState:
    """A state that has measured its device: 55 ms for a small frame, 885 ms for a big one."""
    state = SchedulerState()
    state.observe(WorkClass.IMAGE, 1_000_000, 1_000_000 * seconds_per_pixel, now=-100.0)
    state.last_image_end = -100.0
    return state


def test_a_pass_holds_one_bucket_oldest_first() -> None:
    waiting = [image(1.0, BIG, BIG_COST), image(2.0), image(0.5), image(3.0, BIG, BIG_COST), image(0.7)]
    chosen = next_pass(waiting, 10.0, measured(), Policy(max_images=8, pass_target_s=10))
    assert isinstance(chosen, Pass) and chosen.work_class is WorkClass.IMAGE
    assert {item.bucket for item in chosen.items} == {SMALL}
    assert [item.since for item in chosen.items] == [0.5, 0.7, 2.0]


def test_cheap_frames_are_not_held_behind_an_expensive_one() -> None:
    state = measured()
    policy = Policy(max_images=8, pass_target_s=10)
    big_first = [image(0.0, BIG, BIG_COST)] + [image(0.01 * index) for index in range(1, 7)]
    chosen = next_pass(big_first, 0.1, state, policy)
    assert isinstance(chosen, Pass) and chosen.items[0].bucket == SMALL and len(chosen.items) == 6


def test_an_expensive_frame_ages_to_the_front() -> None:
    """The response ratio grows with the wait: a big frame that waited long goes before fresh small ones."""
    state = measured()
    waiting = [image(0.0, BIG, BIG_COST), image(9.9)]
    chosen = next_pass(waiting, 10.0, state, Policy(max_delay_s=0))
    assert isinstance(chosen, Pass) and chosen.items[0].bucket == BIG


def test_pass_limits_images_views_cost_and_time() -> None:
    state = measured()
    many = [image(index * 0.001) for index in range(20)]
    assert len(next_pass(many, 1.0, state, Policy(max_images=8, pass_target_s=100)).items) == 8
    assert len(next_pass(many, 1.0, state, Policy(max_images=64, pass_target_s=0.2)).items) == 3  # 55 ms each
    assert len(next_pass(many, 1.0, state, Policy(max_pass_cost=3 * SMALL_COST, pass_target_s=9)).items) == 3
    flips = [Waiting(WorkClass.IMAGE, SMALL, index * 0.001, 4, 4 * SMALL_COST) for index in range(5)]
    assert len(next_pass(flips, 1.0, state, Policy(max_images=8, pass_target_s=100)).items) == 2  # views counted
    big = [image(index * 0.001, BIG, BIG_COST) for index in range(3)]
    assert len(next_pass(big, 1.0, state, Policy(pass_target_s=0.25)).items) == 1  # one frame always goes


def test_the_first_pass_measures_a_single_frame() -> None:
    waiting = [image(index * 0.001) for index in range(5)]
    chosen = next_pass(waiting, 1.0, SchedulerState(), Policy())
    assert isinstance(chosen, Pass) and len(chosen.items) == 1


def test_a_pass_that_is_not_full_waits_the_batching_delay_for_more() -> None:
    state = measured()
    assert next_pass([image(1.000)], 1.002, state, Policy(max_delay_s=0.005)) == Wait(1.005)
    assert isinstance(next_pass([image(1.000)], 1.006, state, Policy(max_delay_s=0.005)), Pass)
    full = [image(1.0 + index * 1e-4) for index in range(8)]
    assert isinstance(next_pass(full, 1.001, state, Policy(max_images=8, max_delay_s=0.005, pass_target_s=9)), Pass)
    assert next_pass([], 1.0, state, Policy()) is None


def test_video_gets_its_share_of_the_device_under_image_load() -> None:
    """Images go first, but a waiting video is never starved: it gets about `video_share` of the device time."""
    state, policy, clock = measured(), Policy(max_delay_s=0, video_share=0.5, linger_s=0), 0.0
    used = {WorkClass.IMAGE: 0.0, WorkClass.VIDEO: 0.0}
    for _ in range(400):
        waiting = [image(clock - 0.01), frame(WorkClass.VIDEO, clock - 0.02)]
        chosen = next_pass(waiting, clock, state, policy)
        assert isinstance(chosen, Pass)
        seconds = 0.05 if chosen.work_class is WorkClass.IMAGE else 0.02
        clock += seconds
        used[chosen.work_class] += seconds
        state.observe(chosen.work_class, SMALL_COST, seconds, clock)
    share = used[WorkClass.VIDEO] / sum(used.values())
    assert 0.4 < share < 0.6


def test_without_video_images_take_everything_and_images_come_first_once_video_had_its_share() -> None:
    state, policy = measured(), Policy(max_delay_s=0, video_share=0.5)
    state.observe(WorkClass.VIDEO, SMALL_COST, 1.0, now=0.0)  # video just ran alone
    chosen = next_pass([frame(WorkClass.VIDEO, 0.0), image(0.5)], 1.0, state, policy)
    assert chosen.work_class is WorkClass.IMAGE


def test_a_stream_frame_goes_before_images_once_it_waited_its_patience() -> None:
    state, policy = measured(), Policy(max_delay_s=0, stream_patience_s=0.25)
    fresh = [image(0.0), frame(WorkClass.STREAM, 0.9)]
    assert next_pass(fresh, 1.0, state, policy).work_class is WorkClass.IMAGE
    stale = [image(0.0), frame(WorkClass.STREAM, 0.7)]
    assert next_pass(stale, 1.0, state, policy).work_class is WorkClass.STREAM
    assert next_pass([frame(WorkClass.STREAM, 0.99)], 1.0, state, policy).work_class is WorkClass.STREAM


def test_streams_run_oldest_bucket_first() -> None:
    streams = [frame(WorkClass.STREAM, 0.5, BIG), frame(WorkClass.STREAM, 0.2), frame(WorkClass.STREAM, 0.3)]
    chosen = next_pass(streams, 1.0, measured(), Policy(pass_target_s=9))
    assert [item.since for item in chosen.items] == [0.2, 0.3]


def test_after_an_image_pass_video_waits_the_linger_for_the_client_s_next_frame() -> None:
    state, policy = measured(), Policy(max_delay_s=0, video_share=0.5, linger_s=0.1)
    state.observe(WorkClass.VIDEO, SMALL_COST, 1.0, now=9.0)  # video had more than its share
    state.observe(WorkClass.IMAGE, SMALL_COST, 0.05, now=10.0)
    assert next_pass([frame(WorkClass.VIDEO, 5.0)], 10.05, state, policy) == Wait(pytest.approx(10.1))
    assert next_pass([frame(WorkClass.VIDEO, 5.0)], 10.11, state, policy).work_class is WorkClass.VIDEO


def test_share_decays_with_time() -> None:
    state = SchedulerState()
    state.observe(WorkClass.IMAGE, SMALL_COST, 1.0, now=0.0)
    state.observe(WorkClass.VIDEO, SMALL_COST, 1.0, now=0.0)
    assert state.share(WorkClass.VIDEO, 0.0) == pytest.approx(0.5)
    state.observe(WorkClass.IMAGE, SMALL_COST, 1.0, now=20.0)  # the old seconds have faded
    assert state.share(WorkClass.VIDEO, 20.0) < 0.05


def test_cheap_images_run_beside_an_expensive_pass_only() -> None:
    state, policy = measured(), Policy(pass_target_s=0.25, express_after_s=0.5)
    big_pass = Pass(WorkClass.IMAGE, (image(0.0, BIG, BIG_COST),))  # about 0.9 s
    small_pass = Pass(WorkClass.IMAGE, (image(0.0),))  # about 55 ms
    waiting = [image(0.1, BIG, BIG_COST), image(0.2), image(0.3)]
    beside = express_pass(waiting, 1.0, state, policy, big_pass)
    assert isinstance(beside, Pass) and [item.since for item in beside.items] == [0.2, 0.3]
    assert express_pass(waiting, 1.0, state, policy, small_pass) is None  # nothing long to run beside
    assert express_pass([image(0.1, BIG, BIG_COST)], 1.0, state, policy, big_pass) is None  # no cheap frame waits
    gradcam = [Waiting(WorkClass.IMAGE, SMALL, 0.2, 1, SMALL_COST, beside=False)]
    assert express_pass(gradcam, 1.0, state, policy, big_pass) is None
    video = [frame(WorkClass.VIDEO, 0.2)]
    assert express_pass(video, 1.0, state, policy, big_pass) is None
    assert express_pass(waiting, 1.0, SchedulerState(), policy, big_pass) is None  # the device is not measured yet
    assert express_pass(waiting, 1.0, state, Policy(express_after_s=None), big_pass) is None


def test_only_passes_that_ran_alone_measure_the_device() -> None:
    state = SchedulerState()
    state.observe(WorkClass.IMAGE, 1000, 1.0, now=1.0, alone=False)
    assert state.seconds_per_cost is None
    state.observe(WorkClass.IMAGE, 1000, 1.0, now=2.0)
    assert state.seconds_per_cost == pytest.approx(1e-3)
