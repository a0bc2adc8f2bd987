"""The Streamlit UI of Persona Space. It never imports torch: the model lives in the worker."""
