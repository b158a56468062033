"""The partition assignment a worker joins its group with, from what the broker says of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from streaminfer.errors import InfrastructureError
from streaminfer.kafka.admin import GroupInfo
from streaminfer.kafka.config import KafkaSettings
from streaminfer.stream.clients import EAGER, INCREMENTAL, assignment_strategy, consumer_config
from streaminfer.stream.settings import WorkerSettings

NO_MEMBERS = GroupInfo(members=0, settled=True, assignor="", incremental_protocol=False)


def settled(assignor: str) -> GroupInfo:
    return GroupInfo(members=2, settled=True, assignor=assignor, incremental_protocol=False)


REBALANCING = GroupInfo(members=2, settled=False, assignor="", incremental_protocol=False)


def answers(*infos: GroupInfo) -> tuple[list[str], Callable[[str], GroupInfo]]:
    """A describe that gives ``infos`` in turn, and the groups it was asked for."""
    asked: list[str] = []
    given: Iterator[GroupInfo] = iter(infos)

    def describe(group_id: str) -> GroupInfo:
        asked.append(group_id)
        return next(given)

    return asked, describe


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        (NO_MEMBERS, INCREMENTAL),
        (settled("cooperative-sticky"), INCREMENTAL),
        (settled("range"), EAGER),
        (settled("roundrobin"), EAGER),
        (GroupInfo(members=1, settled=True, assignor="uniform", incremental_protocol=True), None),
    ],
)
def test_a_new_group_is_incremental_and_a_running_one_keeps_its_assignment(
    group: GroupInfo, expected: str | None
) -> None:
    asked, describe = answers(group)
    assert assignment_strategy(KafkaSettings(), "g", describe) == expected
    assert asked == ["g"]


@pytest.mark.parametrize("key", ["partition.assignment.strategy", "group.protocol"])
def test_the_users_choice_is_not_second_guessed(key: str) -> None:
    asked, describe = answers()
    kafka = KafkaSettings(properties={key: "range"})
    assert assignment_strategy(kafka, "g", describe) is None
    assert asked == []


def test_a_rebalancing_group_is_asked_again_until_its_members_agree() -> None:
    asked, describe = answers(REBALANCING, REBALANCING, settled("cooperative-sticky"))
    assert assignment_strategy(KafkaSettings(), "g", describe) == INCREMENTAL
    assert len(asked) == 3


def test_a_group_that_never_settles_or_cannot_be_described_gets_librdkafkas_default() -> None:
    _, describe = answers(*[REBALANCING] * 100)
    assert assignment_strategy(KafkaSettings(), "g", describe, settle_s=0.3) == EAGER

    def refused(group_id: str) -> GroupInfo:
        raise InfrastructureError(f"cannot describe consumer group {group_id!r}")

    assert assignment_strategy(KafkaSettings(), "g", refused) == EAGER


def test_the_chosen_assignment_is_a_default_in_the_consumers_config() -> None:
    settings = WorkerSettings(repo="models")
    chosen = consumer_config(settings, KafkaSettings(), INCREMENTAL)
    assert chosen["partition.assignment.strategy"] == INCREMENTAL
    assert "partition.assignment.strategy" not in consumer_config(settings, KafkaSettings())
