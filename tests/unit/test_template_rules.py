"""What a synced template takes, and how a request's parameters are counted against it
(services/content/templates.py), without a provider."""

from __future__ import annotations

from services.content.templates import (
    meta_count_problems,
    meta_variables,
    twilio_count_problems,
    twilio_variables,
)

AUTH = [
    {"type": "BODY", "text": "*{{1}}* is your verification code."},
    {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy"}]},
]


def test_meta_counts_header_body_and_parameter_buttons() -> None:
    spec = meta_variables(
        [
            {"type": "HEADER", "format": "LOCATION"},
            {"type": "BODY", "text": "Hi {{1}}, {{2}} and {{1}} again"},
            {"type": "FOOTER", "text": "no {{3}} counted here"},
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "QUICK_REPLY", "text": "Stop"},
                    {"type": "URL", "text": "Site", "url": "https://x.example/"},
                    {"type": "COPY_CODE", "example": "SAVE10"},
                ],
            },
        ]
    )
    assert spec["header"] == {"count": 1, "type": "location"}
    assert spec["body"] == {"count": 2, "names": ["1", "2"]}
    assert spec["buttons"] == [{"index": 2, "type": "copy_code", "count": 1}]
    assert spec["count"] == 4


def test_an_authentication_template_needs_its_code_in_the_body_and_the_button() -> None:
    spec = meta_variables(AUTH)
    assert meta_count_problems(spec, {"variables": ["123456"]}) == [
        "button 0 (otp) expects 1 parameter, got 0"
    ]
    components = [
        {"type": "body", "parameters": [{"type": "text", "text": "123456"}]},
        {
            "type": "button",
            "sub_type": "url",
            "index": "0",
            "parameters": [{"type": "text", "text": "123456"}],
        },
    ]
    assert meta_count_problems(spec, {"components": components}) == []


def test_named_parameters_need_components() -> None:
    spec = meta_variables([{"type": "BODY", "text": "Hi {{first_name}}"}], "NAMED")
    assert spec["format"] == "named" and spec["body"]["names"] == ["first_name"]
    assert meta_count_problems(spec, {"variables": ["Ann"]}) == [
        "it takes named parameters (first_name): give template.components with each "
        "parameter's parameter_name"
    ]


def test_twilio_variables_come_from_defaults_and_placeholders() -> None:
    spec = twilio_variables(
        {"variables": {"2": "b"}, "types": {"twilio/text": {"body": "{{1}} {{2}} {{10}}"}}}
    )
    assert spec == {"format": "positional", "names": ["1", "2", "10"], "count": 3}
    # A list fills 1, 2, 3 (providers/twilio.py): it cannot reach {{10}}.
    assert twilio_count_problems(spec, {"variables": ["a", "b", "c"]}) == [
        "expects 3 variables (1, 2, 10), got 3; missing 10; unknown 3"
    ]
    assert twilio_count_problems(spec, {"content_variables": {"1": "a", "2": "b", "10": "c"}}) == []
    assert twilio_count_problems(spec, {"content_variables": {"1": "a", "9": "z"}}) == [
        "expects 3 variables (1, 2, 10), got 2; missing 2, 10; unknown 9"
    ]
