"""The vision core: everything clean, train and infer build on.

| module        | what it gives                                                          |
| ------------- | ---------------------------------------------------------------------- |
| frames.py     | smart_resize, input_size, box conversions between coordinate frames    |
| regions.py    | Regions (boxes, phrases, scores), iou_matrix, dedup                    |
| parse.py      | parse_regions, parse_json, format_regions (the training target)        |
| tasks.py      | prompt_for, parser_for, DEFAULT_SYSTEM                                 |
| manifest.py   | Manifest: pixel budget, convention, task, prompts of a data set        |
| model.py      | load_model, load_processor (with or without torchvision)               |
| inputs.py     | build_inputs: chat template, image tokens, assistant-only labels       |
| build.py      | make_model, model_config: random-weight checkpoints built offline      |
| shapes.py     | make_shapes: synthetic dense-captioning data with exact boxes          |
| family.py     | Family, family_of: what a checkpoint's model_type decides (28/32 px, boxes) |
| build_family.py | random Qwen2-VL / Qwen3-VL checkpoints (tiny, 2b/4b/8b)              |
| build_qwen35.py | Qwen3.5's configs (tiny, 9b) and thinking chat template              |
| quantize.py   | quantize_checkpoint: a pre-quantized nf4 checkpoint (dev quantize)     |
"""
