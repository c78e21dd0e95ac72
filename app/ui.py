"""The gr.Blocks layout and its event wiring. The logic is elsewhere: UI events in app/handlers.py,
what they show in app/views.py, the API endpoints in app/api.py.

Named API endpoints (gradio_client): ``/chat(image, message, regions, history)`` and
``/segment_point(image, x, y)``; the UI's own events are private. ``/chat`` requests that arrive
together are answered in one batch (``model.max_batch()`` at most, read when the app is built).
"""

from __future__ import annotations

import gradio as gr

from app import api
from app import format as fmt
from app import handlers as h
from app import model

TITLE = "PerceptionGPT: a chat that points at things"
INTRO = """
# PerceptionGPT: a chat that points at things
Ask about an image. Every object the answer grounds gets a **mask and box in its own colour**,
and the phrase naming it in the chat has **the same colour**.

1. **Image**: upload one, or pick an example below it.
2. **Ask**: e.g. *Find all the triangles.* or *Where is the red circle?*
3. **Refer** to something by clicking it: a click segments the object and adds `<region1>`
   (then `<region2>`, ...) to your message, e.g. *What is &lt;region1&gt;?* In **box** mode, click two
   opposite corners instead (or type the corners below). Remove regions one by one, or clear them.
   After a click, **Try** offers requests about that region, e.g. *Describe &lt;region1&gt;.* or
   *Find all the objects with the same color as &lt;region1&gt;.*
"""

CSS = """
#intro { max-width: 980px; }
#intro p, #intro li { font-size: 0.95rem; }
#send { min-width: 90px; }
.region-row { align-items: end; }
.examples-title p { margin: 6px 0 0 2px !important; font-size: 0.9rem; }
#image-info p, #answer-status p { margin: 0 2px; font-size: 0.88rem; opacity: 0.85; }
"""


def _errors_on_preprocess(component, error_for):
    """Wrap the instance's ``preprocess`` so a conversion failure becomes ``error_for(payload, exc)``
    (a gr.Error) instead of gradio's bare "Error". Wrapping, not subclassing: gradio writes a .pyi
    stub next to any module that defines a component class."""
    stock = component.preprocess

    def preprocess(payload):
        try:
            return stock(payload)
        except gr.Error:
            raise
        except Exception as e:
            raise error_for(payload, e) from None

    component.preprocess = preprocess
    return component


def friendly_upload_errors(component: gr.Image) -> gr.Image:
    """An unreadable upload (not an image, a decompression bomb): gr.Image opens uploads with PIL
    before any handler runs; say which file and what to upload instead."""
    def error_for(payload, e):
        name = getattr(payload, "orig_name", None) or "the file"
        return h.error(f"{name} is not a readable image ({type(e).__name__}); upload a PNG, JPEG or WebP.")

    return _errors_on_preprocess(component, error_for)


def named_input_errors(component, expected: str):
    """An API input gradio cannot convert (``x="NaN"``) -> a gr.Error naming the parameter and what
    it expects. For the hidden API-only components (plain text)."""
    def error_for(payload, e):
        return gr.Error(f"{component.label} must be {expected}; got {str(payload)[:60]!r}",
                        title="Error", print_exception=False)

    return _errors_on_preprocess(component, error_for)


def build_app() -> gr.Blocks:
    """The demo, not launched. Launch it with ``launch(demo)`` (theme, CSS, upload limit)."""
    lim = model.limits()
    private = {"api_visibility": "private"}
    light = {"api_visibility": "private", "concurrency_limit": None}  # no model call: never queued behind one
    heavy = {"concurrency_id": "model", "concurrency_limit": 1}  # one model call at a time

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        sess = gr.State(h.new_session())
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Row(equal_height=False):
            with gr.Column(scale=6, min_width=420):
                with gr.Row():
                    image = friendly_upload_errors(gr.Image(
                        type="pil", label="Your image: click to refer", sources=["upload", "clipboard"],
                        format="png", height=380, elem_id="image", buttons=["fullscreen"], min_width=200,
                    ))
                    overlay = gr.Image(label="Answer", type="pil", format="png", height=380, interactive=False,
                                       elem_id="overlay", buttons=["download", "fullscreen"], min_width=200)
                info = gr.Markdown(h.image_info(h.new_session()), elem_id="image-info")
                with gr.Row(elem_classes="region-row"):
                    mode = gr.Radio(h.MODES, value=h.MODE_OBJECT, label="A click adds", scale=3, min_width=150,
                                    elem_id="mode")
                    regions = gr.Dropdown([], label="Regions of the next message", scale=3, min_width=150,
                                          elem_id="regions")
                    with gr.Column(scale=1, min_width=90):
                        remove = gr.Button("Remove", size="sm", elem_id="remove")
                        clear_regions = gr.Button("Clear all", size="sm", elem_id="clear-regions")
                with gr.Accordion("Add a box region by coordinates (pixels, x2/y2 exclusive)", open=False):
                    with gr.Row():
                        bx = [gr.Number(label=n, precision=0, minimum=0, min_width=60)
                              for n in ("x1", "y1", "x2", "y2")]
                        add_box = gr.Button("Add box region", size="md", elem_id="add-box", min_width=100)
                gr.Markdown("**Examples**: ShapesRef scenes; click one to load it.", elem_classes="examples-title")
                gallery = gr.Gallery(
                    [str(p) for p in h.EXAMPLES], show_label=False, columns=6, rows=1, height=110,
                    allow_preview=False, object_fit="contain", elem_id="examples", buttons=[],
                )
            with gr.Column(scale=5, min_width=380):
                chatbot = gr.Chatbot(
                    label="Chat", height=520, elem_id="chat", sanitize_html=False, feedback_options=None,
                    placeholder="Pick an image, then ask about it. "
                                "Grounded phrases appear in the colour of their mask.",
                )
                with gr.Row():
                    msg = gr.Textbox(
                        placeholder="Find all the triangles.   ·   What is <region1>?", show_label=False,
                        max_length=lim.max_prompt_chars, scale=5, elem_id="message", submit_btn=False,
                    )
                    send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                suggest = gr.Dataset(components=[msg], samples=[[p] for p in fmt.suggested_prompts(0)],
                                     label="Try", type="values", elem_id="suggestions", layout="table")
                with gr.Row():
                    show_masks = gr.Checkbox(True, label="Masks", elem_id="show-masks", min_width=80)
                    show_boxes = gr.Checkbox(True, label="Boxes", elem_id="show-boxes", min_width=80)
                    clear_chat = gr.Button("New conversation", size="sm", elem_id="clear-chat", min_width=120)
                status = gr.Markdown("", elem_id="answer-status")
                with gr.Row():
                    dl_json = gr.DownloadButton("Download answer JSON", size="sm", elem_id="download-json")
                    dl_png = gr.DownloadButton("Download overlay PNG", size="sm", elem_id="download-png")
                with gr.Accordion("Answer as JSON (boxes, COCO RLE masks, phrases)", open=False):
                    objects = gr.JSON(label="objects", elem_id="objects")

        # API-only components (named endpoints for gradio_client); never shown
        with gr.Column(visible=False):
            a_image = gr.File(label="image")
            a_message = gr.Textbox(label="message")
            a_regions = gr.Textbox(label="regions", value="[]")
            a_history = gr.JSON(label="history", value=[])
            a_text = gr.Textbox(label="answer")
            a_history_out = gr.JSON(label="history")
            a_objects = gr.JSON(label="objects")
            a_overlay = gr.Image(label="overlay", type="pil", format="png")
            a_x = named_input_errors(gr.Number(label="x", precision=0), "a number (pixels)")
            a_y = named_input_errors(gr.Number(label="y", precision=0), "a number (pixels)")
            a_mask = gr.JSON(label="mask")
            a_chat = gr.Button()
            a_segment = gr.Button()

        def then_suggest(event):  # the suggestions follow the pending regions (a click offers region requests)
            event.then(h.suggestions, [sess], [suggest], **light)

        new_image_out = [sess, image, chatbot, overlay, regions, objects, dl_json, dl_png, info, status]
        then_suggest(image.upload(h.set_image, [sess, image], new_image_out, **light))  # a file or a paste
        then_suggest(image.clear(h.clear_image, [sess], new_image_out, **light))
        then_suggest(gallery.select(h.pick_example, [sess], new_image_out, **light))

        region_out = [sess, image, msg, regions]
        then_suggest(image.select(h.click, [sess, msg, mode, image], region_out, **private, **heavy))
        then_suggest(add_box.click(h.add_box, [sess, msg, *bx], region_out, **light))
        then_suggest(remove.click(h.remove_region, [sess, msg, regions], region_out, **light))
        then_suggest(clear_regions.click(h.clear_regions, [sess, msg], region_out, **light))
        suggest.click(h.use_suggestion, [suggest], [msg], **light)

        then_suggest(gr.on([msg.submit, send.click], h.chat, [sess, msg, show_masks, show_boxes],
                           [sess, chatbot, msg, image, regions, overlay, objects, dl_json, dl_png, status],
                           api_name="ui_chat", **private, **heavy))
        gr.on([show_masks.change, show_boxes.change], h.redraw, [sess, show_masks, show_boxes],
              [overlay, dl_png], **light)
        clear_chat.click(h.clear_chat, [sess], [sess, chatbot, overlay, objects, dl_json, dl_png, status], **light)

        # up to max_batch() /chat requests run at once: each is validated in its own call, then the
        # valid ones that arrive together are answered in one chat_batch call (app/batching.py)
        a_chat.click(api.api_chat, [a_image, a_message, a_regions, a_history],
                     [a_text, a_history_out, a_objects, a_overlay], api_name="chat",
                     concurrency_id="chat-api", concurrency_limit=model.max_batch())
        demo.queue(default_concurrency_limit=1)  # the CPU model is never oversubscribed
        a_segment.click(api.api_segment_point, [a_image, a_x, a_y], [a_mask, a_overlay],
                        api_name="segment_point", **heavy)
    return demo


def launch(demo: gr.Blocks, **kwargs):
    """demo.launch with the app's theme, CSS and upload limit; kwargs override (server_port, ...).

    Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860).
    """
    from app.allocator import limit_malloc_arenas

    limit_malloc_arenas()  # idempotent; main() calls it earlier
    opts = dict(
        max_file_size=model.limits().max_upload_bytes,
        allowed_paths=[str(h.EXAMPLES_DIR)],  # the example gallery, wherever the app is started from
        theme=gr.themes.Soft(primary_hue="indigo"),
        css=CSS,
        footer_links=["api"],
    )
    opts.update(kwargs)
    return demo.launch(**opts)
