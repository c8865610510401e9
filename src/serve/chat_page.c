/* chat_page.c - the page GET / returns: a self-contained chat client (inline CSS and JS, no
 * external assets) that keeps the conversation in the browser and streams each answer from
 * /v1/chat/completions. An API key, when the server needs one, is typed into the page.
 *
 * The element ids (q, send, log, t, k, model) and each answer's data-state ("streaming", then
 * "done" or "error") are what tests/test_chat_page.py drives and watches in headless Chromium,
 * so they are part of the page's contract. A stream that ends without "data: [DONE]" is an
 * error, never a silently truncated answer. */
#include "serve/serve_internal.h"

const char ts_chat_page_html[] =
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Tessera chat</title>\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<style>\n"
    "body{font-family:system-ui,sans-serif;max-width:46rem;margin:0 auto;padding:1rem;background:#fafafa}\n"
    "#log{min-height:50vh}.m{white-space:pre-wrap;overflow-wrap:anywhere;padding:.5rem .75rem;margin:.4rem 0;"
    "border-radius:.5rem}\n"
    ".user{background:#dbeafe}.assistant{background:#fff;border:1px solid #ddd}.error{background:#fee2e2}\n"
    "[data-state=streaming]::after{content:'\\2589';color:#999}\n"
    "form{display:flex;gap:.5rem}textarea{flex:1;height:4rem}small{color:#666}\n"
    "</style></head><body>\n"
    "<h3>Tessera <small id=\"model\"></small></h3>\n"
    "<div id=\"log\"></div>\n"
    "<form id=\"f\"><textarea id=\"q\" placeholder=\"Message (Enter sends, Shift+Enter: new line)\"></textarea>"
    "<button id=\"send\">Send</button></form>\n"
    "<p><small>Temperature <input id=\"t\" type=\"number\" value=\"0.7\" step=\"0.1\" min=\"0\" style=\"width:4rem\"> "
    "API key <input id=\"k\" type=\"password\" style=\"width:10rem\"> "
    "<a href=\"#\" id=\"clear\">clear</a></small></p>\n"
    "<script>\n"
    "const $=id=>document.getElementById(id),log=$('log'),q=$('q'),send=$('send');let msgs=[],model='';\n"
    "function headers(){const h={'Content-Type':'application/json'},k=$('k').value;"
    "if(k)h.Authorization='Bearer '+k;return h}\n"
    "function add(cls,text){const d=document.createElement('div');d.className='m '+cls;d.textContent=text;"
    "log.appendChild(d);d.scrollIntoView({block:'end'});return d}\n"
    /* the server's OpenAI-shaped error message when there is one, else the HTTP status */
    "async function failure(r){let m='';try{const j=await r.json();m=j.error&&j.error.message}catch(e){}"
    "return new Error(m||'HTTP '+r.status+' '+r.statusText)}\n"
    /* asked again when the API key changes, since a missing key makes the first answer 401 */
    "function models(){fetch('v1/models',{headers:headers()}).then(async r=>{if(!r.ok)throw await failure(r);"
    "return r.json()}).then(j=>{model=j.data[0].id;$('model').textContent=model})"
    ".catch(e=>{$('model').textContent='(no model list: '+e.message+')'})}\nmodels();$('k').onchange=models;\n"
    /* appends each SSE delta to `out` as it arrives; throws on an error event or an early end */
    "async function stream(r,out){\n"
    " const rd=r.body.getReader(),dec=new TextDecoder();let buf='';\n"
    " for(;;){const {value,done}=await rd.read();if(done)throw new Error('the stream ended early');"
    "buf+=dec.decode(value,{stream:true});let i;\n"
    "  while((i=buf.indexOf('\\n\\n'))>=0){const ev=buf.slice(0,i);buf=buf.slice(i+2);\n"
    "   if(ev==='data: [DONE]')return;if(!ev.startsWith('data: '))continue;const j=JSON.parse(ev.slice(6));\n"
    "   if(j.error)throw new Error(j.error.message);\n"
    "   const c=j.choices&&j.choices[0]&&j.choices[0].delta.content;"
    "if(c){out.textContent+=c;out.scrollIntoView({block:'end'})}}}\n"
    "}\n"
    "async function ask(text){\n"
    " msgs.push({role:'user',content:text});add('user',text);const out=add('assistant','');\n"
    " out.dataset.state='streaming';send.disabled=true;\n"
    " try{\n"
    "  const r=await fetch('v1/chat/completions',{method:'POST',headers:headers(),body:JSON.stringify({model:model||undefined,"
    "messages:msgs,stream:true,temperature:parseFloat($('t').value)||0})});\n"
    "  if(!r.ok)throw await failure(r);\n"
    "  await stream(r,out);msgs.push({role:'assistant',content:out.textContent});out.dataset.state='done'\n"
    " }catch(e){out.className='m error';out.textContent+=(out.textContent?'\\n':'')+'Error: '+e.message;"
    "out.dataset.state='error';msgs.pop()}\n"
    " send.disabled=false;q.focus()\n"
    "}\n"
    /* one answer at a time (and no clearing meanwhile): the conversation sent with the next turn
     * must hold this one */
    "$('f').onsubmit=e=>{e.preventDefault();const t=q.value.trim();if(t&&!send.disabled){q.value='';ask(t)}};\n"
    "q.onkeydown=e=>{if(e.key==='Enter'&&!e.shiftKey){e.preventDefault();$('f').requestSubmit()}};\n"
    "$('clear').onclick=e=>{e.preventDefault();if(!send.disabled){msgs=[];log.textContent=''}};\n"
    "</script></body></html>\n";
