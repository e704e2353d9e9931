"""Chat and evaluation: open a model directory with its training-time template and tiling, then generate."""
from vlft.infer.answers import multiple_choice_prompt, parse_choice, reference_index
from vlft.infer.chat import ChatSession, run_chat
from vlft.infer.evaluate import EvalItem, EvalReport, evaluate_model, format_table, read_eval_file, run_eval
from vlft.infer.loading import load_for_inference

__all__ = ["ChatSession", "EvalItem", "EvalReport", "evaluate_model", "format_table", "load_for_inference",
           "multiple_choice_prompt", "parse_choice", "read_eval_file", "reference_index", "run_chat", "run_eval"]
