"""The contract: what the producer and the workers both use. Settings, parameters, the task
contract (messages), the tokenizer, the model artifact format, the store, errors, redaction and
recovery. Nothing here needs TensorFlow (tests/test_imports.py checks every import statically)."""
