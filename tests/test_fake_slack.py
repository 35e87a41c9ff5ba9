"""The fake Slack Web API behaves like Slack where the bot depends on it, through slack_sdk's
own WebClient: posting and updating messages, tokens, rate limits with Retry-After, refused
blocks, failures on demand, and a record of every call."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from bot.render import blocks as render
from tests.support.fake_slack import FAKE_TOKEN, FakeSlack

SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "hello"}}


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(user_groups={"S0OPS": ["U1", "U2"]}) as fake:
        yield fake


def client_for(slack: FakeSlack, token: str = FAKE_TOKEN, **options: Any) -> WebClient:
    return WebClient(token=token, base_url=slack.base_url, timeout=5, **options)


def error_of(call: Any) -> str:
    with pytest.raises(SlackApiError) as caught:
        call()
    return str(caught.value.response["error"])


def test_auth_test_answers_who_the_bot_is(slack: FakeSlack) -> None:
    answer = client_for(slack).auth_test()

    assert answer["ok"] and answer["user_id"] == slack.bot_user_id
    assert slack.calls("auth.test")[0].token == FAKE_TOKEN


def test_posted_messages_are_kept_per_channel_with_unique_timestamps(slack: FakeSlack) -> None:
    client = client_for(slack)

    first = client.chat_postMessage(channel="C1", text="one", blocks=[SECTION])
    second = client.chat_postMessage(channel="C1", text="two", blocks=[SECTION])
    client.chat_postMessage(channel="C2", text="elsewhere", blocks=[SECTION])

    assert first["channel"] == "C1" and first["ts"] != second["ts"]
    assert [m.text for m in slack.messages("C1")] == ["one", "two"]
    assert slack.message("C1", first["ts"]).blocks == [SECTION]
    assert len(slack.messages()) == 3


def test_an_update_changes_what_a_person_sees_and_keeps_the_earlier_versions(
    slack: FakeSlack,
) -> None:
    client = client_for(slack)
    posted = client.chat_postMessage(channel="C1", text="dumping", blocks=[SECTION])

    client.chat_update(channel="C1", ts=posted["ts"], text="verifying", blocks=[SECTION])
    client.chat_update(channel="C1", ts=posted["ts"], text="done", blocks=[])

    shown = slack.message("C1", posted["ts"])
    assert shown.text == "done" and shown.blocks == [] and shown.updates == 2
    assert [text for text, _ in shown.versions] == ["dumping", "verifying", "done"]
    assert len(slack.messages("C1")) == 1


def test_updating_a_message_that_does_not_exist_answers_message_not_found(
    slack: FakeSlack,
) -> None:
    client = client_for(slack)
    posted = client.chat_postMessage(channel="C1", text="one", blocks=[SECTION])

    assert error_of(lambda: client.chat_update(channel="C1", ts="1.000999", text="x")) == (
        "message_not_found"
    )
    assert error_of(lambda: client.chat_update(channel="C2", ts=posted["ts"], text="x")) == (
        "message_not_found"
    )
    assert slack.message("C1", posted["ts"]).text == "one"


def test_an_ephemeral_message_cannot_be_updated(slack: FakeSlack) -> None:
    client = client_for(slack)
    answer = client.chat_postEphemeral(channel="C1", user="U1", text="only you", blocks=[SECTION])

    assert slack.ephemerals("C1", "U1")[0].text == "only you"
    assert slack.messages("C1") == []
    assert error_of(
        lambda: client.chat_update(channel="C1", ts=answer["message_ts"], text="x")
    ) == ("message_not_found")


@pytest.mark.parametrize(("token", "error"), [("xoxb-wrong", "invalid_auth"), (None, "not_authed")])
def test_a_bad_or_missing_token_is_refused_and_changes_nothing(
    slack: FakeSlack, token: str | None, error: str
) -> None:
    client = WebClient(token=token, base_url=slack.base_url, timeout=5)

    assert error_of(lambda: client.chat_postMessage(channel="C1", text="x")) == error
    assert slack.messages() == []
    assert slack.calls("chat.postMessage")[0].response["error"] == error


def test_a_429_is_waited_out_by_slack_sdks_rate_limit_handler_then_succeeds(
    slack: FakeSlack,
) -> None:
    slack.rate_limit("chat.postMessage", times=1, retry_after=1)
    client = client_for(slack, retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)])

    answer = client.chat_postMessage(channel="C1", text="after the wait", blocks=[SECTION])

    assert answer["ok"]
    calls = slack.calls("chat.postMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].at - calls[0].at >= 1.0  # it waited for Retry-After
    assert [m.text for m in slack.messages("C1")] == ["after the wait"]


def test_without_a_retry_handler_a_429_reaches_the_caller_with_retry_after(
    slack: FakeSlack,
) -> None:
    slack.rate_limit("chat.update", times=1, retry_after=7)
    client = client_for(slack)
    posted = client.chat_postMessage(channel="C1", text="x", blocks=[SECTION])

    with pytest.raises(SlackApiError) as caught:
        client.chat_update(channel="C1", ts=posted["ts"], text="y")

    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "7"
    assert client.chat_update(channel="C1", ts=posted["ts"], text="y")["ok"]


def test_51_blocks_are_refused_as_invalid_blocks_and_50_are_not(slack: FakeSlack) -> None:
    client = client_for(slack)

    assert client.chat_postMessage(channel="C1", text="t", blocks=[SECTION] * 50)["ok"]
    assert error_of(
        lambda: client.chat_postMessage(channel="C1", text="t", blocks=[SECTION] * 51)
    ) == ("invalid_blocks")
    assert len(slack.messages("C1")) == 1


@pytest.mark.parametrize(
    "bad",
    [
        [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}],
        [{"type": "section", "fields": [{"type": "mrkdwn", "text": "x" * 2001}]}],
        [{"type": "section", "fields": [{"type": "mrkdwn", "text": "x"}] * 11}],
        [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}],
        [{**SECTION, "block_id": "same"}, {**SECTION, "block_id": "same"}],
        [{"type": "section"}],
    ],
    ids=["section text", "field text", "fields", "header", "duplicate block_id", "empty"],
)
def test_blocks_over_slacks_limits_are_refused_on_post_and_update(
    slack: FakeSlack, bad: list[dict[str, Any]]
) -> None:
    client = client_for(slack)
    posted = client.chat_postMessage(channel="C1", text="fine", blocks=[SECTION])

    assert error_of(lambda: client.chat_postMessage(channel="C1", text="t", blocks=bad)) == (
        "invalid_blocks"
    )
    assert error_of(
        lambda: client.chat_update(channel="C1", ts=posted["ts"], text="t", blocks=bad)
    ) == ("invalid_blocks")
    assert slack.message("C1", posted["ts"]).text == "fine"


def test_blocks_over_13000_characters_are_too_long(slack: FakeSlack) -> None:
    big = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 2900}}

    error = error_of(
        lambda: client_for(slack).chat_postMessage(channel="C1", text="t", blocks=[big] * 5)
    )

    assert error == "msg_blocks_too_long"


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_a_message_without_fallback_text_is_refused(slack: FakeSlack) -> None:
    client = client_for(slack)

    assert error_of(lambda: client.chat_postMessage(channel="C1", blocks=[SECTION])) == "no_text"
    assert error_of(lambda: client.chat_postMessage(channel="C1", text=" ")) == "no_text"


def test_a_home_view_may_have_100_blocks_but_not_101(slack: FakeSlack) -> None:
    client = client_for(slack)

    client.views_publish(user_id="U1", view={"type": "home", "blocks": [SECTION] * 100})
    error = error_of(
        lambda: client.views_publish(user_id="U1", view={"type": "home", "blocks": [SECTION] * 101})
    )

    assert error == "invalid_blocks"
    assert len(slack.views("U1")) == 1 and len(slack.views("U1")[0]["blocks"]) == 100


def test_usergroup_members_come_from_the_configured_groups(slack: FakeSlack) -> None:
    client = client_for(slack)

    assert client.usergroups_users_list(usergroup="S0OPS")["users"] == ["U1", "U2"]
    assert error_of(lambda: client.usergroups_users_list(usergroup="S0NONE")) == "no_such_subteam"
    assert slack.calls("usergroups.users.list")[0].params["usergroup"] == "S0OPS"


def test_conversations_open_and_posting_to_a_user_go_to_their_dm(slack: FakeSlack) -> None:
    client = client_for(slack)

    opened = client.conversations_open(users="U1")["channel"]["id"]
    posted = client.chat_postMessage(channel="U1", text="hi", blocks=[SECTION])

    assert opened == posted["channel"] == "DU1"


def test_form_encoded_and_json_bodies_are_both_understood(slack: FakeSlack) -> None:
    blocks_json = json.dumps([SECTION])
    form = f"channel=C9&text=form+body&blocks={urllib.parse.quote(blocks_json)}".encode()
    request = urllib.request.Request(  # noqa: S310 (loopback)
        slack.base_url + "chat.postMessage",
        data=form,
        headers={
            "Authorization": f"Bearer {FAKE_TOKEN}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        answer = json.loads(response.read())
    client_for(slack).chat_postMessage(channel="C9", text="json body", blocks=[SECTION])

    assert answer["ok"]
    assert [(m.text, m.blocks) for m in slack.messages("C9")] == [
        ("form body", [SECTION]),
        ("json body", [SECTION]),
    ]


def test_fail_answers_ok_false_with_the_given_error_for_the_next_calls_only(
    slack: FakeSlack,
) -> None:
    slack.fail("chat.postMessage", "channel_not_found", times=2)
    client = client_for(slack)

    errors = [error_of(lambda: client.chat_postMessage(channel="C1", text="x")) for _ in range(2)]

    assert errors == ["channel_not_found"] * 2
    assert client.chat_postMessage(channel="C1", text="x")["ok"]
    assert client.auth_test()["ok"]


def test_a_fault_for_every_method_applies_to_all_of_them(slack: FakeSlack) -> None:
    slack.fail("*", "fatal_error", times=None)
    client = client_for(slack)

    assert error_of(client.auth_test) == "fatal_error"
    assert error_of(lambda: client.chat_postMessage(channel="C1", text="x")) == "fatal_error"
    slack.clear_faults()
    assert client.auth_test()["ok"]


def test_a_delay_slows_the_answer_but_still_answers(slack: FakeSlack) -> None:
    slack.delay("auth.test", 0.3, times=1)
    client = client_for(slack)

    began = time.monotonic()
    assert client.auth_test()["ok"]
    slow = time.monotonic() - began
    began = time.monotonic()
    client.auth_test()
    fast = time.monotonic() - began

    assert slow >= 0.3 > fast


def test_every_call_is_recorded_even_from_many_threads(slack: FakeSlack) -> None:
    client = client_for(slack)

    def post(i: int) -> None:
        client.chat_postMessage(channel="C1", text=f"m{i}", blocks=[SECTION])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    calls = slack.calls("chat.postMessage")
    assert len(calls) == 20 and all(c.ok for c in calls)
    assert len({m.ts for m in slack.messages("C1")}) == 20
    assert sorted(c.params["text"] for c in calls) == sorted(f"m{i}" for i in range(20))


def test_a_response_url_keeps_what_is_posted_to_it(slack: FakeSlack) -> None:
    message = render.refusal("not an operator")
    webhook = WebhookClient(slack.response_url("cmd1"), timeout=5)

    answer = webhook.send(text=message.text, blocks=message.blocks, response_type="ephemeral")

    assert answer.status_code == 200 and answer.body == "ok"
    assert slack.responses("cmd1")[0]["blocks"] == message.blocks
    assert webhook.send(text="t", blocks=[SECTION] * 51).status_code == 400


def test_messages_rendered_by_the_bot_are_accepted_and_visible_as_sent(slack: FakeSlack) -> None:
    client = client_for(slack)
    help_message = render.help_message()

    posted = client.chat_postMessage(
        channel="C1", text=help_message.text, blocks=help_message.blocks
    )

    shown = slack.message("C1", posted["ts"])
    assert "/blnk-restore KEY|latest into NEWDB" in shown.visible_text()
    assert shown.blocks == help_message.blocks


def test_an_unknown_method_answers_unknown_method(slack: FakeSlack) -> None:
    assert error_of(lambda: client_for(slack).api_call("chat.scheduleMessage")) == (
        "unknown_method"
    )
