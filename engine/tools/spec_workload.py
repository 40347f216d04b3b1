"""Prompts whose answers repeat much of the prompt, for the speculative-decoding benchmark (`kvserve bench
--workload repetitive`): fix the typos in a text, edit a piece of code, repeat a passage, reformat a list.
Prompt lookup (n-gram speculation) drafts from the prompt, so these are where it should pay; random-token
prompts are where it should not cost anything.

Each prompt is a user message, wrapped in the model's chat template when it has one.
"""

from __future__ import annotations

REPETITIVE_PROMPTS: tuple[str, ...] = (
    "Fix the typos in this text and output the corrected text only:\n\n"
    "The comittee met on tuesday to discus the new budjet. After a long debate, the members agred to "
    "increase funding for the libary and to reduce the spending on ofice supplies. The chairman thankd "
    "everyone for there hard work and said the next meeting wil be held in two weeks.",

    "Rename the variable `x` to `total` in this Python function and output the whole function:\n\n"
    "def add_prices(items):\n"
    "    x = 0\n"
    "    for item in items:\n"
    "        if item.price > 0:\n"
    "            x = x + item.price\n"
    "        else:\n"
    "            print('skipping', item.name)\n"
    "    return x\n",

    "Repeat the following passage exactly, word for word:\n\n"
    "The river runs past the old mill and under the stone bridge, where children throw sticks into the water "
    "and race to the other side to watch them come out. In the evening the lamps along the bank are lit one "
    "by one, and the boats are tied up for the night.",

    "Add a docstring to this function and output the complete function:\n\n"
    "def read_config(path):\n"
    "    with open(path) as f:\n"
    "        lines = f.read().splitlines()\n"
    "    config = {}\n"
    "    for line in lines:\n"
    "        key, value = line.split('=', 1)\n"
    "        config[key.strip()] = value.strip()\n"
    "    return config\n",

    "Correct the spelling mistakes in this email and output the corrected email:\n\n"
    "Dear Sarah,\n\nThank you for your mesage. I am happy to confirm that the shipment will arive on Friday "
    "morning. Please let me know if you need any aditional information about the order or the delivery "
    "adress.\n\nBest regards,\nTom",

    "Convert every line of this list to upper case and output the list:\n\n"
    "- apples from the north orchard\n- pears from the south orchard\n- plums from the east orchard\n"
    "- cherries from the west orchard\n- apples from the hill farm\n- pears from the river farm\n",
)


def repetitive_prompts(tokenizer) -> list[list[int]]:
    """The prompts as token ids, in the model's chat template when the tokenizer has one."""
    out = []
    for text in REPETITIVE_PROMPTS:
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 returns a BatchEncoding
                ids = ids["input_ids"]
            out.append(list(ids))
        else:
            out.append(tokenizer.encode(text))
    return out
