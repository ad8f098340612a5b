"""Code shared by the producer and the workers. Only modules that need TensorFlow import it
(model.py, train.py, generate.py), and only inside the processes that run tasks."""
