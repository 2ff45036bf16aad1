"""The chat template, as plain Python: turns messages into the prompt string.

Torch-free and shared by training (data formatting), the reference generator and the
runtime, so all three see byte-identical prompts. It knows the template's token names and
how many placeholders an input image takes (the caller passes it); it does not tokenize.
"""

from __future__ import annotations

from runtime.constants import IM_END, IM_START, IMG_CONTEXT, IMG_START, IMG_STOP


def image_placeholder(n_image_tokens: int) -> str:
    """The text an input image becomes: `<img>` + one `<IMG_CONTEXT>` per embedding + `</img>`."""
    return IMG_START + IMG_CONTEXT * n_image_tokens + IMG_STOP + "\n"


def format_chat(messages: list[dict], n_image_tokens: int, add_generation_prompt: bool = True) -> str:
    """Render messages (`{"role": ..., "content": str | list of parts}`) to the prompt string.

    A content part is `{"type": "text", "text": ...}` or `{"type": "image", ...}`; each image
    part becomes an image placeholder at its place. Assistant turns given as text are closed
    with `<|im_end|>`; with `add_generation_prompt` an open assistant turn ends the prompt.
    """
    out = []
    for message in messages:
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message role must be system, user or assistant, got {role!r}")
        content = message.get("content", "")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        body = []
        for part in parts:
            if part.get("type") == "image":
                body.append(image_placeholder(n_image_tokens))
            elif part.get("type") == "text":
                body.append(part["text"])
            else:
                raise ValueError(f"content part type must be text or image, got {part.get('type')!r}")
        out.append(f"{IM_START}{role}\n{''.join(body)}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


# The same template for Hugging Face tokenizer_config.json (jinja), kept beside its Python twin.
CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "{{ '<img>' + '<IMG_CONTEXT>' * num_image_tokens + '</img>\\n' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
