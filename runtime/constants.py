"""The one place for token names, file names and artifact keys shared by every package.

Torch-free (the runtime imports it on the device). It knows names only: ids live in each
checkpoint's `config.json` and each bundle's `manifest.json`, never here.
"""

# Text special tokens of the tokenizers we train; ids 0..5 in that order for the `tiny` preset.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<img>"  # InternVL's input-image delimiters
IMG_STOP = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"  # one placeholder per input-image embedding
SPECIAL_TEXT_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMG_START, IMG_STOP, IMG_CONTEXT)

# ARMOR's new tokens (rows of the `new` embedding table, after the image codes).
IMG_BOS = "<imgbos>"  # emitted by the text head: switch to IMAGE mode
IMG_END = "<imgend>"  # emitted by the visual head (or forced on a full grid): back to TEXT
IMG_PAD = "<imgpad>"  # pads image sequences; never sampled
NEW_SPECIAL_TOKENS = (IMG_BOS, IMG_END, IMG_PAD)

# Classifier-free guidance: the unconditional branch is the chat template with an empty user turn
# (training drops the condition to exactly this), then `<imgbos>` and the codes so far.
UNCONDITIONAL_MESSAGES = ({"role": "user", "content": ""},)

# Checkpoint directory (training_ref output, export input).
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
VQGAN_FILE = "vqgan.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TRAIN_STATE_FILE = "train_state.json"

# Bundle (armor-export output, runtime input).
MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.npy"

CHECKPOINT_FORMAT = "armor-checkpoint"
CHECKPOINT_FORMAT_VERSION = 2  # 2: the adapter reads the image's context (one more position row)

BUNDLE_FORMAT = "armor-bundle"
BUNDLE_SCHEMA_VERSION = 3  # 3: model.kv_cache names the decoder's cache form (dynamic / static)
GENAI_CONFIG_FILE = "genai_config.json"  # onnxruntime-genai's config, in the bundle's text/

# --- GGUF (text.gguf for llama.cpp; armor_export/gguf.py writes, runtime/backends/llamacpp.py reads) ---
GGUF_FILE = "text.gguf"
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_k_m")  # f32 written by gguf-py; the others by llama.cpp's quantizer
GGUF_FORMAT_VERSION = 1  # ARMOR's own keys below; bump when their meaning changes
GGUF_CODE_TOKEN = "<|code_{}|>"  # the token name of image code c in text.gguf's vocabulary
GGUF_KEY_FORMAT_VERSION = "armor.format_version"
GGUF_KEY_N_TEXT_VOCAB = "armor.n_text_vocab"
GGUF_KEY_N_CODES = "armor.n_codes"
GGUF_KEY_CODE_OFFSET = "armor.code_offset"
GGUF_KEY_IMG_BOS = "armor.img_bos_id"
GGUF_KEY_IMG_END = "armor.img_end_id"
GGUF_KEY_IMG_PAD = "armor.img_pad_id"
GGUF_KEY_IMAGE_CONTEXT = "armor.image_context_id"
GGUF_KEY_N_IMAGE_TOKENS = "armor.n_image_tokens"
GGUF_KEY_IMAGE_GRID = "armor.image_grid"  # [h, w] codes of a generated image
GGUF_KEY_ADAPTER_CONTEXT_START = "armor.adapter_context_start"
GGUF_KEY_CFG_SCALE = "armor.cfg_scale"
GGUF_KEY_EMBEDDINGS_SHA256 = "armor.embeddings_sha256"  # the bundle's embeddings.npy this file belongs to
