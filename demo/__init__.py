"""Gradio chat app for questions about gymnastics clips."""
