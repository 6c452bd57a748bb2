"""What is sent: request validation, numbers, templates, media, WhatsApp conversation
features (replies, reactions, typing)."""
