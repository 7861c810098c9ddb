"""What a logged ensemble model carries and runs where it is served: the MLflow pyfunc ensemble,
the photo crop and the face detector it needs. It imports only the bottom layers (core,
trainables, results), never the CLI or the stages, so the model's code_paths carry this
package and nothing of them.
"""
